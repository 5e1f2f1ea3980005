// Command go-peer-client is a real grpc-go client for grpc-runtime's
// integration tests: one call, one JSON line on stdout.
//
//	go-peer-client --target HOST:PORT (--insecure | --ca FILE [--cert FILE --key FILE] [--server-name NAME])
//	               --call get|create|list|health [--user-id N] [--name NAME] [--tag T]...
//	               [--service NAME] [--gzip] [--metadata KEY=VALUE]... [--timeout SECONDS]
//
// An RPC that fails is a result, not a crash: the exit code is 0 whenever the
// JSON line was printed, 2 on a usage error and 1 when the client could not
// start (an unreadable certificate, say).
//
//	get, create  {"ok":true,"user":{"id":1,"name":"alice","tags":["admin"]},"response_compressed":false}
//	list         {"ok":true,"users":[{..},..],"response_compressed":false}
//	health       {"ok":true,"status":"SERVING"}
//	any failure  {"ok":false,"code":"NotFound","details":"user 9 not found"}
//	             (list adds "users": the ones received before the failure)
//
// code is grpc-go's codes.Code.String(): "NotFound", "Unavailable", ... (the
// grpcio peer prints NOT_FOUND; compare case- and underscore-insensitively).
// response_compressed tells whether the response headers carried
// grpc-encoding: gzip. grpc-go keeps that header out of the metadata that
// grpc.Header returns, so it is read from the client's stats handler.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding/gzip"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"grpc-operator.test/peers/userpb"
)

type userJSON struct {
	ID   int64    `json:"id"`
	Name string   `json:"name"`
	Tags []string `json:"tags"`
}

type result struct {
	OK                 bool        `json:"ok"`
	Code               string      `json:"code,omitempty"`
	Details            *string     `json:"details,omitempty"`
	User               *userJSON   `json:"user,omitempty"`
	Users              *[]userJSON `json:"users,omitempty"` // a pointer, so that no users is []
	Status             string      `json:"status,omitempty"`
	ResponseCompressed *bool       `json:"response_compressed,omitempty"`
}

// kvList is a repeatable KEY=VALUE flag.
type kvList [][2]string

func (l *kvList) String() string { return fmt.Sprint(*l) }
func (l *kvList) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want KEY=VALUE, got %q", s)
	}
	*l = append(*l, [2]string{strings.ToLower(k), v})
	return nil
}

// strList is a repeatable string flag.
type strList []string

func (l *strList) String() string     { return strings.Join(*l, ",") }
func (l *strList) Set(s string) error { *l = append(*l, s); return nil }

type options struct {
	target, call, ca, cert, key, serverName, name, service string
	userID                                                 int64
	tags                                                   strList
	metadata                                               kvList
	insecure, gzip                                         bool
	timeout                                                time.Duration
}

func parseFlags() options {
	var o options
	var timeout float64
	flag.StringVar(&o.target, "target", "", "HOST:PORT of the server")
	flag.BoolVar(&o.insecure, "insecure", false, "plaintext HTTP/2 (h2c) instead of TLS")
	flag.StringVar(&o.ca, "ca", "", "PEM file of the CA(s) that sign the server certificate")
	flag.StringVar(&o.cert, "cert", "", "client certificate chain (PEM), for mTLS")
	flag.StringVar(&o.key, "key", "", "client private key (PEM), for mTLS")
	flag.StringVar(&o.serverName, "server-name", "localhost", "name to check the server certificate against")
	flag.StringVar(&o.call, "call", "", "get, create, list or health")
	flag.Int64Var(&o.userID, "user-id", 1, "get: the id to ask for")
	flag.StringVar(&o.name, "name", "peer", "create: the new user's name")
	flag.Var(&o.tags, "tag", "create: a tag (repeatable)")
	flag.StringVar(&o.service, "service", "", "health: the service to check (\"\": the server as a whole)")
	flag.BoolVar(&o.gzip, "gzip", false, "compress the request with gzip (grpc-go then compresses the response too)")
	flag.Var(&o.metadata, "metadata", "request metadata KEY=VALUE (repeatable)")
	flag.Float64Var(&timeout, "timeout", 5, "deadline of the call, seconds")
	flag.Parse()

	usage := func(msg string) {
		fmt.Fprintln(os.Stderr, "go-peer-client:", msg)
		flag.Usage()
		os.Exit(2)
	}
	switch {
	case flag.NArg() > 0:
		usage("unexpected arguments: " + strings.Join(flag.Args(), " "))
	case o.target == "":
		usage("--target is required")
	case o.insecure && (o.ca != "" || o.cert != "" || o.key != ""):
		usage("--insecure excludes --ca/--cert/--key")
	case !o.insecure && o.ca == "":
		usage("give --ca FILE (TLS) or --insecure (plaintext)")
	case (o.cert == "") != (o.key == ""):
		usage("--cert and --key go together")
	case timeout <= 0:
		usage("--timeout must be positive")
	}
	switch o.call {
	case "get", "create", "list", "health":
	default:
		usage("--call must be get, create, list or health")
	}
	o.timeout = time.Duration(timeout * float64(time.Second))
	return o
}

func transportCredentials(o options) (credentials.TransportCredentials, error) {
	if o.insecure {
		return insecure.NewCredentials(), nil
	}
	pem, err := os.ReadFile(o.ca)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate", o.ca)
	}
	cfg := &tls.Config{RootCAs: roots, ServerName: o.serverName, MinVersion: tls.VersionTLS12}
	if o.cert != "" {
		pair, err := tls.LoadX509KeyPair(o.cert, o.key)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return credentials.NewTLS(cfg), nil
}

// encodingRecorder remembers the grpc-encoding of the response headers
// (stats.InHeader.Compression is grpc-go's parsed copy of it).
type encodingRecorder struct{ encoding atomic.Value }

func (r *encodingRecorder) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context {
	return ctx
}
func (r *encodingRecorder) HandleRPC(_ context.Context, s stats.RPCStats) {
	if h, ok := s.(*stats.InHeader); ok && h.Client {
		r.encoding.Store(h.Compression)
	}
}
func (r *encodingRecorder) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (r *encodingRecorder) HandleConn(context.Context, stats.ConnStats) {}

func (r *encodingRecorder) gzipped() *bool {
	enc, _ := r.encoding.Load().(string)
	b := enc == gzip.Name
	return &b
}

func toJSON(u *userpb.User) userJSON {
	tags := u.GetTags()
	if tags == nil {
		tags = []string{} // "tags":[] rather than null, as the other peers print
	}
	return userJSON{ID: u.GetId(), Name: u.GetName(), Tags: tags}
}

func failure(err error) result {
	st := status.Convert(err)
	details := st.Message()
	return result{Code: st.Code().String(), Details: &details}
}

func call(ctx context.Context, o options, conn *grpc.ClientConn, rec *encodingRecorder) result {
	var callOpts []grpc.CallOption
	if o.gzip {
		callOpts = append(callOpts, grpc.UseCompressor(gzip.Name))
	}
	users := userpb.NewUserServiceClient(conn)
	switch o.call {
	case "get", "create":
		var u *userpb.User
		var err error
		if o.call == "get" {
			u, err = users.GetUser(ctx, &userpb.GetUserRequest{UserId: o.userID}, callOpts...)
		} else {
			u, err = users.CreateUser(ctx, &userpb.CreateUserRequest{Name: o.name, Tags: o.tags}, callOpts...)
		}
		if err != nil {
			return failure(err)
		}
		j := toJSON(u)
		return result{OK: true, User: &j, ResponseCompressed: rec.gzipped()}

	case "list":
		received := []userJSON{}
		stream, err := users.ListUsers(ctx, &userpb.ListUsersRequest{}, callOpts...)
		for err == nil {
			var u *userpb.User
			if u, err = stream.Recv(); err == nil {
				received = append(received, toJSON(u))
			}
		}
		if !errors.Is(err, io.EOF) {
			r := failure(err)
			r.Users = &received
			return r
		}
		return result{OK: true, Users: &received, ResponseCompressed: rec.gzipped()}

	default: // health
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: o.service}, callOpts...)
		if err != nil {
			return failure(err)
		}
		return result{OK: true, Status: resp.GetStatus().String()}
	}
}

func main() {
	o := parseFlags()
	creds, err := transportCredentials(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-peer-client:", err)
		os.Exit(1)
	}
	rec := &encodingRecorder{}
	conn, err := grpc.NewClient(o.target, grpc.WithTransportCredentials(creds), grpc.WithStatsHandler(rec))
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-peer-client:", err)
		os.Exit(1)
	}
	defer conn.Close()

	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	for _, kv := range o.metadata {
		ctx = metadata.AppendToOutgoingContext(ctx, kv[0], kv[1])
	}
	line, err := json.Marshal(call(ctx, o, conn, rec))
	if err != nil {
		panic(err) // the result types always marshal
	}
	fmt.Println(string(line))
}

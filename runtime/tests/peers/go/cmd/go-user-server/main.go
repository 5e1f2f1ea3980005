// Command go-user-server serves user.v1.UserService with grpc-go, behind a
// choice of interceptor chains, as the Go baseline that grpc-runtime's tests
// and benchmarks compare the Rust server with.
//
//	go-user-server [--addr 127.0.0.1:0] [--admin-addr 127.0.0.1:0]
//	               [--chain full|prometheus|grpc-prometheus|none] [--log-file FILE]
//
// Its first two stdout lines are `listening <addr>` and `admin <addr>`, the
// addresses actually bound (so port 0 works); access log lines (chain full)
// follow on stdout unless --log-file is given. /metrics on the admin address
// serves the chain's grpc_server_* metrics. SIGTERM or SIGINT: health turns
// NOT_SERVING, in-flight calls finish (GracefulStop), exit 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	_ "google.golang.org/grpc/encoding/gzip" // registers gzip: a gzip request gets a gzip response
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"grpc-operator.test/peers/userpb"
)

// stopTimeout bounds GracefulStop: a stream that never ends (a stuck client)
// must not keep a test waiting for the process forever.
const stopTimeout = 10 * time.Second

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "go-user-server:", err)
		os.Exit(1)
	}
}

func run() error {
	addr := flag.String("addr", "127.0.0.1:0", "gRPC listen address (port 0: any free port)")
	adminAddr := flag.String("admin-addr", "127.0.0.1:0", "HTTP address of /metrics")
	chainName := flag.String("chain", chainFull, "interceptors: full, prometheus, grpc-prometheus or none")
	logFile := flag.String("log-file", "", "access log file of chain full (default: stdout)")
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}

	var logOut io.Writer = os.Stdout
	if *logFile != "" {
		f, err := os.OpenFile(*logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		logOut = f
	}

	// An own registry, as a production server would serve: the chain's
	// metrics plus the Go runtime and process collectors.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ch, err := newChain(*chainName, reg, logOut)
	if err != nil {
		return err
	}

	srv := grpc.NewServer(ch.opts...)
	userpb.RegisterUserServiceServer(srv, newUsers())
	hs := health.NewServer() // "" is SERVING from the start
	hs.SetServingStatus(userpb.UserService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	ch.initMetrics(srv)

	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	adminLis, err := net.Listen("tcp", *adminAddr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	admin := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}

	// Both lines before any access log line: readers take the first two.
	fmt.Printf("listening %s\nadmin %s\n", lis.Addr(), adminLis.Addr())

	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(lis) }()
	go func() {
		if err := admin.Serve(adminLis); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	stop() // a second signal kills the process the default way

	hs.Shutdown()
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(stopTimeout):
		srv.Stop()
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return admin.Shutdown(shutdownCtx)
}

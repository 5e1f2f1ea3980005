package main

import (
	"context"
	"fmt"
	"io"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	grpcprometheus "github.com/grpc-ecosystem/go-grpc-prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The --chain values.
const (
	chainFull       = "full"            // recovery, otelgrpc, logging, metrics: a production stack
	chainPrometheus = "prometheus"      // providers/prometheus server metrics only
	chainLegacy     = "grpc-prometheus" // the archived go-grpc-prometheus v1.2.0 itself
	chainNone       = "none"            // bare grpc-go
)

// chain is what a --chain adds to the server: its options, and a hook to run
// once the services are registered (metrics pre-initialise one series per
// method, as production servers do, so the first scrape already has them).
type chain struct {
	opts        []grpc.ServerOption
	initMetrics func(*grpc.Server)
}

// newChain builds the interceptors of name, registering their metrics on reg
// and writing access logs (chain full) to logOut.
func newChain(name string, reg prometheus.Registerer, logOut io.Writer) (chain, error) {
	switch name {
	case chainNone:
		return chain{initMetrics: func(*grpc.Server) {}}, nil

	case chainPrometheus:
		m := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
		reg.MustRegister(m)
		return chain{
			opts: []grpc.ServerOption{
				grpc.ChainUnaryInterceptor(m.UnaryServerInterceptor()),
				grpc.ChainStreamInterceptor(m.StreamServerInterceptor()),
			},
			initMetrics: func(s *grpc.Server) { m.InitializeMetrics(s) },
		}, nil

	case chainLegacy:
		// NewServerMetrics rather than the package's default instance, which
		// its init registers on the global registry that /metrics does not serve.
		m := grpcprometheus.NewServerMetrics()
		m.EnableHandlingTimeHistogram()
		reg.MustRegister(m)
		return chain{
			opts: []grpc.ServerOption{
				grpc.ChainUnaryInterceptor(m.UnaryServerInterceptor()),
				grpc.ChainStreamInterceptor(m.StreamServerInterceptor()),
			},
			initMetrics: m.InitializeMetrics,
		}, nil

	case chainFull:
		m := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
		reg.MustRegister(m)
		logger := interceptorLogger(newJSONLogger(logOut))
		logOpts := []logging.Option{
			// One line per call, when it finishes (the default adds a line at the start).
			logging.WithLogOnEvents(logging.FinishCall),
			logging.WithFieldsFromContext(traceIDFields),
		}
		// A panic becomes Internal, like the Rust runtime's recovery layer.
		rec := recovery.WithRecoveryHandler(func(p any) error {
			return status.Errorf(codes.Internal, "panic: %v", p)
		})
		return chain{
			opts: []grpc.ServerOption{
				// otelgrpc is a stats handler, so it wraps every interceptor:
				// it extracts the W3C traceparent into the context the
				// interceptors and the handler see. No exporter is set up, so
				// the global tracer provider is the no-op one: spans are not
				// recorded, but the caller's trace id still reaches the logs.
				grpc.StatsHandler(otelgrpc.NewServerHandler(
					otelgrpc.WithPropagators(propagation.TraceContext{}),
				)),
				// Outermost first, as in the Rust runtime and in
				// go-grpc-middleware's own example: metrics and logging sit
				// outside recovery, so a recovered panic is counted and logged
				// as the Internal the caller gets (with recovery outermost, a
				// panic would unwind past them and leave no trace in either).
				grpc.ChainUnaryInterceptor(
					m.UnaryServerInterceptor(),
					logging.UnaryServerInterceptor(logger, logOpts...),
					recovery.UnaryServerInterceptor(rec),
				),
				grpc.ChainStreamInterceptor(
					m.StreamServerInterceptor(),
					logging.StreamServerInterceptor(logger, logOpts...),
					recovery.StreamServerInterceptor(rec),
				),
			},
			initMetrics: func(s *grpc.Server) { m.InitializeMetrics(s) },
		}, nil
	}
	return chain{}, fmt.Errorf("unknown --chain %q (want %s, %s, %s or %s)",
		name, chainFull, chainPrometheus, chainLegacy, chainNone)
}

// newJSONLogger is zap's production JSON encoding without its sampling (which
// drops lines past 100 a second): tests count access lines, one per call.
func newJSONLogger(out io.Writer) *zap.Logger {
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	core := zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.Lock(zapcore.AddSync(out)), zapcore.InfoLevel)
	return zap.New(core)
}

// interceptorLogger adapts zap to go-grpc-middleware's logging.Logger. Unlike
// the adapter in go-grpc-middleware's example, it logs through Logger.Log
// instead of building a child logger with With for every call.
func interceptorLogger(l *zap.Logger) logging.Logger {
	return logging.LoggerFunc(func(_ context.Context, lvl logging.Level, msg string, fields ...any) {
		zfields := make([]zap.Field, 0, len(fields)/2)
		for i := 0; i+1 < len(fields); i += 2 {
			key, _ := fields[i].(string)
			switch v := fields[i+1].(type) {
			case string:
				zfields = append(zfields, zap.String(key, v))
			case int:
				zfields = append(zfields, zap.Int(key, v))
			case bool:
				zfields = append(zfields, zap.Bool(key, v))
			default:
				zfields = append(zfields, zap.Any(key, v))
			}
		}
		l.Log(zapLevel(lvl), msg, zfields...)
	})
}

func zapLevel(lvl logging.Level) zapcore.Level {
	switch lvl {
	case logging.LevelDebug:
		return zapcore.DebugLevel
	case logging.LevelWarn:
		return zapcore.WarnLevel
	case logging.LevelError:
		return zapcore.ErrorLevel
	default:
		return zapcore.InfoLevel
	}
}

// traceIDFields adds the caller's W3C trace id to the access line, so it can
// be joined with the caller's trace. Calls without a traceparent add nothing.
func traceIDFields(ctx context.Context) logging.Fields {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		return logging.Fields{"trace_id", sc.TraceID().String()}
	}
	return nil
}

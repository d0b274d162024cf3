// Command dspy-pool-example calls a dspy-pool sidecar from Go: it waits for
// the health service to say SERVING, registers a program, executes it, holds
// a two-turn session and shows how an error's status and details read.
//
//	dspy-pool serve --lm sim &
//	./build/dspy-pool-example -target 127.0.0.1:50051
//
// It exits non-zero when any step does not behave as documented, so it
// doubles as a smoke test. Build with ./build.sh (GOPATH mode, Debian
// packages; see README.md).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	pb "example.com/dspypool/gen/dspy_pool/v1"
)

// Client wraps the generated stub with the sidecar's conventions: a
// deadline on every call and Struct <-> map conversion at the boundary.
type Client struct {
	conn            *grpc.ClientConn
	api             pb.DSPyPoolClient
	health          healthpb.HealthClient
	DefaultDeadline time.Duration
}

// Dial connects without TLS: the sidecar listens on loopback (or a Unix
// socket: "unix:///path.sock") inside the pod.
func Dial(target string) (*Client, error) {
	// grpc.WithInsecure: Debian's grpc-go 1.33 predates credentials/insecure.
	conn, err := grpc.Dial(target, grpc.WithInsecure())
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, api: pb.NewDSPyPoolClient(conn), health: healthpb.NewHealthClient(conn), DefaultDeadline: 30 * time.Second}, nil
}

func (c *Client) Close() error { return c.conn.Close() }

func (c *Client) ctx(parent context.Context, deadline time.Duration) (context.Context, context.CancelFunc) {
	if deadline <= 0 {
		deadline = c.DefaultDeadline
	}
	return context.WithTimeout(parent, deadline)
}

// WaitForServing polls grpc.health.v1.Health/Check until SERVING.
func (c *Client) WaitForServing(ctx context.Context, timeout time.Duration) error {
	until := time.Now().Add(timeout)
	var last error
	for time.Now().Before(until) {
		callCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := c.health.Check(callCtx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		last = err
		if err == nil {
			last = fmt.Errorf("health: %s", resp.Status)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("not SERVING after %s: %v", timeout, last)
}

// RegisterProgram registers a spec (demos and options stay protobuf types
// here; build them with structpb.NewStruct).
func (c *Client) RegisterProgram(ctx context.Context, spec *pb.ProgramSpec) (*pb.Program, error) {
	callCtx, cancel := c.ctx(ctx, 0)
	defer cancel()
	return c.api.RegisterProgram(callCtx, &pb.RegisterProgramRequest{Spec: spec})
}

// Result is an ExecuteResponse with its outputs as a Go map.
type Result struct {
	Outputs  map[string]interface{}
	Response *pb.ExecuteResponse
}

// ExecuteOptions are the optional parts of a call.
type ExecuteOptions struct {
	Version   int32
	SessionID string
	RequestID string
	Deadline  time.Duration // bounds queue wait plus execution; 0: DefaultDeadline
}

// Execute runs a program. inputs is converted with structpb.NewStruct, which
// accepts nil, bool, all int/uint/float kinds, string, []byte (base64),
// map[string]interface{} and []interface{}; anything else is an error.
func (c *Client) Execute(ctx context.Context, program string, inputs map[string]interface{}, opts ExecuteOptions) (*Result, error) {
	in, err := structpb.NewStruct(inputs)
	if err != nil {
		return nil, fmt.Errorf("inputs: %w", err)
	}
	callCtx, cancel := c.ctx(ctx, opts.Deadline)
	defer cancel()
	resp, err := c.api.Execute(callCtx, &pb.ExecuteRequest{
		Program: program, Version: opts.Version, Inputs: in, SessionId: opts.SessionID, RequestId: opts.RequestID,
	})
	if err != nil {
		return nil, err
	}
	// AsMap gives float64 for every number, as in JSON.
	return &Result{Outputs: resp.GetOutputs().AsMap(), Response: resp}, nil
}

func (c *Client) GetSession(ctx context.Context, id string) (*pb.Session, error) {
	callCtx, cancel := c.ctx(ctx, 0)
	defer cancel()
	return c.api.GetSession(callCtx, &pb.GetSessionRequest{SessionId: id})
}

func (c *Client) CloseSession(ctx context.Context, id string) (int32, error) {
	callCtx, cancel := c.ctx(ctx, 0)
	defer cancel()
	resp, err := c.api.CloseSession(callCtx, &pb.CloseSessionRequest{SessionId: id})
	if err != nil {
		return 0, err
	}
	return resp.Turns, nil
}

// Describe reads a dspy-pool error: the code, the message, and the details
// the server attaches (ErrorInfo always, RetryInfo when it suggests a wait,
// DebugInfo with the worker's traceback for program errors).
func Describe(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return err.Error()
	}
	text := fmt.Sprintf("%s: %s", st.Code(), st.Message())
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			text += fmt.Sprintf(" [reason=%s domain=%s error_type=%s may_have_run=%s]", d.Reason, d.Domain, d.Metadata["error_type"], d.Metadata["may_have_run"])
		case *errdetails.RetryInfo:
			// Debian's genproto uses the old Duration type (no AsDuration).
			delay := time.Duration(d.RetryDelay.GetSeconds())*time.Second + time.Duration(d.RetryDelay.GetNanos())
			text += fmt.Sprintf(" [retry after %s]", delay)
		case *errdetails.DebugInfo:
			text += " [worker traceback attached]"
		}
	}
	return text
}

// MayHaveRun reports whether the server says a failed call may have run (its
// worker died or hung while running it, its deadline passed mid-run): such a
// call must never be sent again, even when its code (UNAVAILABLE) would
// otherwise invite a retry, since a call that killed its worker would kill
// the next one too. This client does not retry; check it before you do.
func MayHaveRun(err error) bool {
	st, ok := status.FromError(err)
	if !ok || err == nil {
		return false
	}
	for _, detail := range st.Details() {
		if info, isInfo := detail.(*errdetails.ErrorInfo); isInfo {
			return info.Metadata["may_have_run"] == "true"
		}
	}
	return false
}

func run(target string) error {
	ctx := context.Background()
	client, err := Dial(target)
	if err != nil {
		return err
	}
	defer client.Close()
	if err := client.WaitForServing(ctx, 60*time.Second); err != nil {
		return err
	}

	program, err := client.RegisterProgram(ctx, &pb.ProgramSpec{
		Name: "go_qa", Signature: "question -> answer", Module: "chain_of_thought",
	})
	if err != nil {
		return fmt.Errorf("register: %s", Describe(err))
	}
	fmt.Printf("registered %s v%d inputs=%v outputs=%v\n", program.Spec.Name, program.Version, program.InputNames, program.OutputNames)

	result, err := client.Execute(ctx, "go_qa", map[string]interface{}{"question": "What is DSPy?"}, ExecuteOptions{Deadline: 10 * time.Second})
	if err != nil {
		return fmt.Errorf("execute: %s", Describe(err))
	}
	answer, _ := result.Outputs["answer"].(string)
	if answer == "" {
		return fmt.Errorf("execute: no answer in %v", result.Outputs)
	}
	r := result.Response
	fmt.Printf("answer=%q worker=%d pid=%d total_ms=%.1f tokens=%d served_by=%s\n",
		answer, r.Worker.GetId(), r.Worker.GetPid(), r.Timings.GetTotalMs(), r.Usage.GetTotalTokens(), r.ServedBy)

	session := fmt.Sprintf("go-session-%d", time.Now().UnixNano())
	for _, q := range []string{"first question", "second question"} {
		if _, err := client.Execute(ctx, "go_qa", map[string]interface{}{"question": q}, ExecuteOptions{SessionID: session}); err != nil {
			return fmt.Errorf("session execute: %s", Describe(err))
		}
	}
	stored, err := client.GetSession(ctx, session)
	if err != nil {
		return fmt.Errorf("get session: %s", Describe(err))
	}
	turns, err := client.CloseSession(ctx, session)
	if err != nil {
		return fmt.Errorf("close session: %s", Describe(err))
	}
	fmt.Printf("session %s: %d turns stored, %d closed\n", session, len(stored.Turns), turns)
	if len(stored.Turns) != 2 {
		return fmt.Errorf("session: expected 2 turns, got %d", len(stored.Turns))
	}

	_, err = client.Execute(ctx, "no_such_program", map[string]interface{}{"question": "x"}, ExecuteOptions{})
	if status.Code(err) != codes.NotFound {
		return fmt.Errorf("unknown program: expected NotFound, got %v", err)
	}
	fmt.Printf("expected error: %s\n", Describe(err))
	return nil
}

func main() {
	target := flag.String("target", "127.0.0.1:50051", "dspy-pool address (HOST:PORT or unix:///path.sock)")
	flag.Parse()
	if err := run(*target); err != nil {
		log.Printf("dspy-pool-example: %v", err)
		os.Exit(1)
	}
	fmt.Println("ok")
}

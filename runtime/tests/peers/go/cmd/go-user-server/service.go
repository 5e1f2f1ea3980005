package main

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"grpc-operator.test/peers/userpb"
)

// users is user.v1.UserService in memory, with the behaviour of the Rust
// example (runtime/examples/user-service/service.rs), so a test or benchmark
// can point the same client at either server and expect the same answers.
//
// Ids are assigned 1, 2, 3, ... and users are never deleted, so the store is
// an append-only slice where user i has id i+1: a lookup is an index, and the
// stored messages are never written after they are appended, so handlers hand
// them to grpc-go as they are (protobuf messages are safe for concurrent
// marshalling) instead of copying them on every call.
type users struct {
	userpb.UnimplementedUserServiceServer

	mu   sync.RWMutex
	byID []*userpb.User
}

// newUsers returns the store seeded like the Rust example: alice and bob.
func newUsers() *users {
	s := &users{}
	s.insert("alice", []string{"admin"})
	s.insert("bob", []string{"dev"})
	return s
}

func (s *users) insert(name string, tags []string) *userpb.User {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := &userpb.User{Id: int64(len(s.byID)) + 1, Name: name, Tags: tags}
	s.byID = append(s.byID, u)
	return u
}

func (s *users) GetUser(_ context.Context, req *userpb.GetUserRequest) (*userpb.User, error) {
	id := req.GetUserId()
	s.mu.RLock()
	var u *userpb.User
	if id >= 1 && id <= int64(len(s.byID)) {
		u = s.byID[id-1]
	}
	s.mu.RUnlock()
	if u == nil {
		return nil, status.Error(codes.NotFound, fmt.Sprintf("user %d not found", id))
	}
	return u, nil
}

func (s *users) CreateUser(_ context.Context, req *userpb.CreateUserRequest) (*userpb.User, error) {
	// Same rule as the Rust service's name.trim().is_empty().
	if strings.TrimSpace(req.GetName()) == "" {
		return nil, status.Error(codes.InvalidArgument, "name: must not be empty")
	}
	// The request is ours once the handler has it, so its tags can be kept.
	return s.insert(req.GetName(), req.GetTags()), nil
}

func (s *users) ListUsers(_ *userpb.ListUsersRequest, stream grpc.ServerStreamingServer[userpb.User]) error {
	// The slice header is the snapshot: appends after it never touch the
	// elements it covers, so the stream is sent without holding the lock.
	s.mu.RLock()
	snapshot := s.byID
	s.mu.RUnlock()
	for _, u := range snapshot {
		if err := stream.Send(u); err != nil {
			return err
		}
	}
	return nil
}

// The server shell: the client port listener (gRPC and HTTP/1.1 on one port), the HTTP router,
// JSON logging and systemd notification. The etcd services plug into it (see docs/ARCHITECTURE.md).

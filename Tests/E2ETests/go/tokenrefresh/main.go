// tokenrefresh: etcd's clientv3 with a user and password keeps working after its simple token
// expired (--auth-token-ttl). clientv3 authenticates again only when the server's answer is
// exactly etcd's ErrInvalidAuthToken (code Unauthenticated, "etcdserver: invalid auth token"),
// so this checks that answer through the client kube-apiserver uses.
//
// Steps: the client reads KEY (its token is then used last); probe tokens are issued after
// that, and one unused probe token per round is tried on a raw Range (250 ms apart, bounded
// by --rounds) until one is refused with ErrInvalidAuthToken: the client's token, older and
// idle since, has expired too. Then the client reads KEY again, which must succeed.
//
// Prints "tokenrefresh ok rounds=N" and exits 0, or prints the failure and exits 1.
// Build (GOPATH mode, Debian packages golang-go golang-etcd-server-dev):
//   GOPATH=<dir>:/usr/share/gocode GO111MODULE=off go build
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/etcdserver/api/v3rpc/rpctypes"
	pb "go.etcd.io/etcd/etcdserver/etcdserverpb"
	"go.uber.org/zap"
	"google.golang.org/grpc/metadata"
)

func fail(format string, args ...interface{}) {
	fmt.Printf("tokenrefresh FAIL "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	endpoint := flag.String("endpoint", "127.0.0.1:2379", "client URL host:port")
	user := flag.String("user", "", "user name")
	password := flag.String("password", "", "password")
	key := flag.String("key", "", "a key the user may read")
	rounds := flag.Int("rounds", 40, "probe rounds (250 ms apart) before giving up")
	flag.Parse()

	logConfig := zap.NewProductionConfig()
	logConfig.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	config := clientv3.Config{Endpoints: []string{*endpoint}, DialTimeout: 5 * time.Second, LogConfig: &logConfig}
	probe, err := clientv3.New(config)
	if err != nil {
		fail("probe client: %v", err)
	}
	defer probe.Close()
	config.Username, config.Password = *user, *password
	cli, err := clientv3.New(config)
	if err != nil {
		fail("client: %v", err)
	}
	defer cli.Close()
	get := func() (*clientv3.GetResponse, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return cli.Get(ctx, *key)
	}
	if _, err := get(); err != nil {
		fail("first get: %v", err)
	}

	tokens := make([]string, 0, *rounds)
	auth := pb.NewAuthClient(probe.ActiveConnection())
	for i := 0; i < *rounds; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r, err := auth.Authenticate(ctx, &pb.AuthenticateRequest{Name: *user, Password: *password})
		cancel()
		if err != nil {
			fail("authenticate: %v", err)
		}
		tokens = append(tokens, r.Token)
	}
	kv := pb.NewKVClient(probe.ActiveConnection())
	expiredAt := -1
	for i, token := range tokens {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := kv.Range(metadata.NewOutgoingContext(ctx, metadata.Pairs("token", token)), &pb.RangeRequest{Key: []byte(*key)})
		cancel()
		if err != nil {
			if rpctypes.Error(err) != rpctypes.ErrInvalidAuthToken {
				fail("probe round %d: not etcd's invalid auth token error: %v", i, err)
			}
			expiredAt = i
			break
		}
		time.Sleep(250 * time.Millisecond) // pacing of the rounds
	}
	if expiredAt < 0 {
		fail("no probe token expired within %d rounds", *rounds)
	}
	resp, err := get()
	if err != nil {
		fail("get after the token expired (clientv3 should authenticate again): %v", err)
	}
	if len(resp.Kvs) != 1 {
		fail("get after the token expired: %d keys", len(resp.Kvs))
	}
	fmt.Printf("tokenrefresh ok rounds=%d\n", expiredAt)
}

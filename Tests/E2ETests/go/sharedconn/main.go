// sharedconn: many goroutines share ONE etcd clientv3 client (one gRPC connection), as
// kube-apiserver does, and each creates distinct keys with a conditional Txn
// (If CreateRevision(key) == 0 Then Put). One watch on the prefix runs alongside.
//
// It checks, for every key:
//   - a create reported as succeeded exists, was written once (version 1) and the watch saw
//     exactly one PUT for it;
//   - a create that failed with an error is retried once; if the retry finds the key already
//     there, the first attempt was executed although the client was told it failed
//     ("executed-but-failed"): the outcome the exactly-once rule forbids to hide;
//   - a first attempt answering "already exists" (Txn not succeeded) for a key created by
//     nobody else means the server executed the same request twice ("double-execution").
//
// It prints one summary line and exits 1 on any failure or violation (with
// --tolerate-failures: on any violation), 2 on bad usage.
// Build (GOPATH mode, Debian packages golang-go golang-etcd-server-dev):
//   GOPATH=<dir>:/usr/share/gocode GO111MODULE=off go build
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/mvcc/mvccpb"
	"go.uber.org/zap"
)

type outcome int

const (
	created         outcome = iota // first attempt succeeded
	doubleExecuted                 // first attempt answered "already exists"
	executedButFail                // first attempt failed, retry found the key
	failedAbsent                   // first attempt failed, retry created it (first did not run)
	unknown                        // first attempt and retry both failed
)

func main() {
	endpoint := flag.String("endpoint", "127.0.0.1:2379", "client URL host:port")
	clients := flag.Int("clients", 200, "goroutines sharing the one client")
	perClient := flag.Int("per-client", 50, "creates per goroutine")
	prefix := flag.String("prefix", fmt.Sprintf("/sharedconn/%d/", time.Now().UnixNano()), "key prefix")
	valueSize := flag.Int("value-size", 64, "value bytes")
	timeout := flag.Duration("request-timeout", 20*time.Second, "per-request timeout")
	tolerateFailures := flag.Bool("tolerate-failures", false,
		"exit 0 despite failed creates (the server was restarted on purpose); violations still fail")
	flag.Parse()
	if *clients < 1 || *perClient < 1 || *valueSize < 0 {
		fmt.Fprintln(os.Stderr, "sharedconn: --clients and --per-client must be positive")
		os.Exit(2)
	}

	// clientv3 logs every failed attempt; the summary below counts them instead.
	logConfig := zap.NewProductionConfig()
	logConfig.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{*endpoint},
		DialTimeout: 5 * time.Second,
		LogConfig:   &logConfig,
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "sharedconn: connect: %v\n", err)
		os.Exit(1)
	}
	defer cli.Close()

	// The watch starts at the current revision, so it sees every create below.
	startCtx, cancelStart := context.WithTimeout(context.Background(), *timeout)
	status, err := cli.Get(startCtx, *prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	cancelStart()
	if err != nil {
		fmt.Fprintf(os.Stderr, "sharedconn: initial get: %v\n", err)
		os.Exit(1)
	}
	startRev := status.Header.Revision

	watchCtx, cancelWatch := context.WithCancel(context.Background())
	defer cancelWatch()
	watch := cli.Watch(watchCtx, *prefix, clientv3.WithPrefix(), clientv3.WithRev(startRev+1))
	type watchState struct {
		sync.Mutex
		puts    map[string]int
		lastRev int64
		errs    []string
	}
	ws := &watchState{puts: map[string]int{}}
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for resp := range watch {
			ws.Lock()
			if err := resp.Err(); err != nil {
				ws.errs = append(ws.errs, err.Error())
			}
			for _, ev := range resp.Events {
				if ev.Type == mvccpb.PUT {
					ws.puts[string(ev.Kv.Key)]++
				}
			}
			if resp.Header.Revision > ws.lastRev {
				ws.lastRev = resp.Header.Revision
			}
			ws.Unlock()
		}
	}()

	value := strings.Repeat("v", *valueSize)
	create := func(key string) (bool, error) {
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		resp, err := cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, value)).
			Commit()
		if err != nil {
			return false, err
		}
		return resp.Succeeded, nil
	}

	var mu sync.Mutex
	outcomes := map[string]outcome{}
	errorSamples := map[string]int{}
	var wg sync.WaitGroup
	began := time.Now()
	for g := 0; g < *clients; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < *perClient; i++ {
				key := fmt.Sprintf("%s%04d/%04d", *prefix, g, i)
				var result outcome
				ok, err := create(key)
				switch {
				case err == nil && ok:
					result = created
				case err == nil:
					result = doubleExecuted
				default:
					mu.Lock()
					errorSamples[err.Error()]++
					mu.Unlock()
					again, err2 := create(key)
					switch {
					case err2 != nil:
						result = unknown
					case again:
						result = failedAbsent
					default:
						result = executedButFail
					}
				}
				mu.Lock()
				outcomes[key] = result
				mu.Unlock()
			}
		}(g)
	}
	wg.Wait()
	elapsed := time.Since(began)

	// What the store holds under the prefix.
	getCtx, cancelGet := context.WithTimeout(context.Background(), *timeout)
	stored, err := cli.Get(getCtx, *prefix, clientv3.WithPrefix())
	cancelGet()
	violations := []string{}
	if err != nil {
		violations = append(violations, "final get: "+err.Error())
	}
	versions := map[string]int64{}
	if stored != nil {
		for _, kv := range stored.Kvs {
			versions[string(kv.Key)] = kv.Version
		}
	}

	// Wait (bounded) until the watch has reached the final revision.
	finalRev := int64(0)
	if stored != nil {
		finalRev = stored.Header.Revision
	}
	deadline := time.Now().Add(*timeout)
	for {
		ws.Lock()
		reached := ws.lastRev >= finalRev
		ws.Unlock()
		if reached || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancelWatch()
	<-watchDone

	counts := map[outcome]int{}
	keys := make([]string, 0, len(outcomes))
	for k := range outcomes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	ws.Lock()
	defer ws.Unlock()
	if ws.lastRev < finalRev {
		violations = append(violations, fmt.Sprintf("watch stopped at revision %d, store at %d", ws.lastRev, finalRev))
	}
	for _, e := range ws.errs {
		violations = append(violations, "watch error: "+e)
	}
	for _, k := range keys {
		o := outcomes[k]
		counts[o]++
		v, exists := versions[k]
		switch o {
		case created, failedAbsent, executedButFail:
			if !exists {
				violations = append(violations, fmt.Sprintf("%s: reported created but missing", k))
			} else if v != 1 {
				violations = append(violations, fmt.Sprintf("%s: written %d times", k, v))
			}
		case doubleExecuted:
			violations = append(violations, fmt.Sprintf("%s: first create answered already-exists", k))
		}
		if exists && ws.lastRev >= finalRev && ws.puts[k] != 1 {
			violations = append(violations, fmt.Sprintf("%s: watch saw %d puts", k, ws.puts[k]))
		}
	}
	for k := range versions {
		if _, ok := outcomes[k]; !ok {
			violations = append(violations, fmt.Sprintf("%s: unexpected key", k))
		}
	}

	failures := len(keys) - counts[created]
	fmt.Printf("sharedconn clients=%d per-client=%d requests=%d created=%d failed=%d "+
		"executed-but-failed=%d failed-not-executed=%d unknown=%d double-executed=%d violations=%d elapsed=%s\n",
		*clients, *perClient, len(keys), counts[created], failures,
		counts[executedButFail], counts[failedAbsent], counts[unknown], counts[doubleExecuted],
		len(violations), elapsed.Round(time.Millisecond))
	for text, n := range errorSamples {
		fmt.Printf("error x%d: %s\n", n, text)
	}
	for i, v := range violations {
		if i == 20 {
			fmt.Printf("... %d more violations\n", len(violations)-20)
			break
		}
		fmt.Printf("violation: %s\n", v)
	}
	if len(violations) > 0 || (failures > 0 && !*tolerateFailures) {
		os.Exit(1)
	}
}

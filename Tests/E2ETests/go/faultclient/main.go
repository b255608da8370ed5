// faultclient: etcd's clientv3 (the client kube-apiserver uses: its balancer over every
// endpoint, retries and keepalive) as one more client of the fault tests. Each goroutine
// loops until SIGTERM or --stop-file appears (with --pause between requests) over kube-apiserver's kinds of request on the test's keys:
//   - a create: Txn If CreateRevision(key) == 0 Then Put;
//   - an update: a linearizable Get, then Txn If ModRevision(key) == the read's Then Put;
//   - a plain linearizable Get.
//
// Every request goes on one line of stdout, as JSON, once answered, failed or cut short:
//
//	{"c":client,"k":key,"t":"get"|"cas","v":value,"x":expected,"ok":succeeded,"s":start,"f":end}
//
// "x" is absent for a create, "v" absent for a get of a missing key, "f" is -1 when the
// outcome is unknown (an error: the write may or may not have happened). Times are
// CLOCK_MONOTONIC nanoseconds minus --origin, the test's own clock.
//
// Build (GOPATH mode, Debian packages golang-go golang-etcd-server-dev):
//
//	GOPATH=<dir>:/usr/share/gocode GO111MODULE=off go build
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

type record struct {
	Client   int     `json:"c"`
	Key      string  `json:"k"`
	Kind     string  `json:"t"`
	Value    *string `json:"v,omitempty"`
	Expected *string `json:"x,omitempty"`
	OK       bool    `json:"ok"`
	Start    int64   `json:"s"`
	End      int64   `json:"f"`
}

var origin int64

func now() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err)
	}
	return ts.Nano() - origin
}

func main() {
	endpoints := flag.String("endpoints", "", "client URLs host:port, comma-separated")
	clients := flag.Int("clients", 2, "goroutines")
	firstID := flag.Int("first-id", 100, "client number of the first goroutine in the history")
	hot := flag.String("hot-keys", "", "keys updated by compare-and-swap, comma-separated")
	creates := flag.String("create-keys", "", "keys created once, comma-separated")
	seed := flag.Int64("seed", 1, "random seed")
	timeout := flag.Duration("request-timeout", 5*time.Second, "per-request timeout")
	pause := flag.Duration("pause", 100*time.Millisecond, "wait between two requests of a goroutine (the load, and the history the checker gets)")
	stopFile := flag.String("stop-file", "", "stop once this file exists (children of the test process get SIGTERM blocked)")
	flag.Int64Var(&origin, "origin", 0, "CLOCK_MONOTONIC nanoseconds of the test's time zero")
	flag.Parse()
	if *endpoints == "" || *hot == "" || *creates == "" || *clients < 1 {
		fmt.Fprintln(os.Stderr, "faultclient: --endpoints, --hot-keys, --create-keys and --clients are required")
		os.Exit(2)
	}
	hotKeys := strings.Split(*hot, ",")
	createKeys := strings.Split(*creates, ",")

	logConfig := zap.NewProductionConfig()
	logConfig.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            strings.Split(*endpoints, ","),
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    30 * time.Second,
		DialKeepAliveTimeout: 10 * time.Second,
		LogConfig:            &logConfig,
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "faultclient: connect: %v\n", err)
		os.Exit(1)
	}
	defer cli.Close()

	var stopping int32
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-signals; atomic.StoreInt32(&stopping, 1) }()
	if *stopFile != "" {
		go func() {
			for {
				if _, err := os.Stat(*stopFile); err == nil {
					atomic.StoreInt32(&stopping, 1)
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
	}

	var out sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	emit := func(r record) {
		out.Lock()
		defer out.Unlock()
		if err := enc.Encode(r); err != nil {
			os.Exit(1)
		}
	}

	var wg sync.WaitGroup
	for g := 0; g < *clients; g++ {
		wg.Add(1)
		go func(id int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(*seed + int64(id)*7919))
			for i := 1; atomic.LoadInt32(&stopping) == 0; i++ {
				time.Sleep(*pause)
				value := fmt.Sprintf("g%d-%d", id, i)
				if rng.Intn(3) == 0 {
					key := createKeys[rng.Intn(len(createKeys))]
					r := record{Client: id, Key: key, Kind: "cas", Value: &value, Start: now()}
					ctx, cancel := context.WithTimeout(context.Background(), *timeout)
					resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
						Then(clientv3.OpPut(key, value)).Commit()
					cancel()
					r.End, r.OK = -1, true // unknown: it may have happened
					if err == nil {
						r.End, r.OK = now(), resp.Succeeded
					}
					emit(r)
					continue
				}
				keys := hotKeys
				if rng.Intn(3) == 0 {
					keys = createKeys
				}
				key := keys[rng.Intn(len(keys))]
				r := record{Client: id, Key: key, Kind: "get", OK: true, Start: now()}
				ctx, cancel := context.WithTimeout(context.Background(), *timeout)
				resp, err := cli.Get(ctx, key)
				cancel()
				if err != nil {
					continue // a read that failed tells nothing
				}
				r.End = now()
				var mod int64
				if len(resp.Kvs) > 0 {
					v := string(resp.Kvs[0].Value)
					r.Value, mod = &v, resp.Kvs[0].ModRevision
				}
				emit(r)
				if r.Value == nil || rng.Intn(2) == 0 {
					continue
				}
				w := record{Client: id, Key: key, Kind: "cas", Value: &value, Expected: r.Value, Start: now()}
				ctx, cancel = context.WithTimeout(context.Background(), *timeout)
				txn, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", mod)).
					Then(clientv3.OpPut(key, value)).Commit()
				cancel()
				w.End, w.OK = -1, true
				if err == nil {
					w.End, w.OK = now(), txn.Succeeded
				}
				emit(w)
			}
		}(*firstID + g)
	}
	wg.Wait()
}

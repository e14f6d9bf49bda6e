// Command loadgen-go is the native load generator of `npm run bench:workers`: the same latency and
// throughput jobs as bench/loadgen.ts, speaking exactly what Meteor's browser client speaks
// (GET <root>/sockjs/info, honour base_url, then the SockJS websocket or xhr-polling transport,
// then DDP), with a per-client source address (127.0.x.2) and cookie jar, and per-client
// connections like a browser (at most 2 per xhr session).
//
// Why a second one: on a 2-core machine the load generator shares the cores with the servers it
// measures. The Node one costs about as much CPU per call as the reference app does, so any setup
// that could use both cores is capped by the generator; this one costs a fraction of that.
//
//	loadgen-go '<job json>'
//
// Writes to stdout one JSON object per line: {"type":"mark","what":"start"|"end"} around the
// measured window, then {"type":"result","result":{...},"cpuSec":N}. Every job is bounded: a session
// count, a duration and per-operation timeouts.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

const opTimeout = 10 * time.Second

// requests counts HTTP requests (xhr) or websocket frames (ws) sent in the measured window: with
// xhr-polling a call costs what its requests cost, and a saturated server batches more calls per
// request (sockjs sends every queued message in one poll response).
var (
	requests  atomic.Int64
	measuring atomic.Bool
)

func counted() {
	if measuring.Load() {
		requests.Add(1)
	}
}

// Job is bench/loadgen.ts's Job, for kinds 'latency' and 'throughput'.
type Job struct {
	Kind         string   `json:"kind"`
	Transport    string   `json:"transport"`
	Entries      []string `json:"entries"`
	Pick         string   `json:"pick"`
	Sessions     int      `json:"sessions"`
	Rate         int      `json:"rate"`
	Depth        int      `json:"depth"`
	WarmupMs     int      `json:"warmupMs"`
	DurationMs   int      `json:"durationMs"`
	PayloadBytes int      `json:"payloadBytes"`
}

// Percentiles is bench/loadgen.ts's Percentiles (ms).
type Percentiles struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
	N   int     `json:"n"`
}

var out = struct {
	sync.Mutex
	w *bufio.Writer
}{w: bufio.NewWriter(os.Stdout)}

func emit(v any) {
	b, _ := json.Marshal(v)
	out.Lock()
	out.w.Write(b)
	out.w.WriteByte('\n')
	out.w.Flush()
	out.Unlock()
}

func mark(what string) { emit(map[string]string{"type": "mark", "what": what}) }

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

func percentiles(ms []float64) any {
	if len(ms) == 0 {
		return map[string]any{"p50": nil, "p90": nil, "p99": nil, "max": nil, "n": 0}
	}
	sort.Float64s(ms)
	at := func(q float64) float64 {
		i := int(math.Ceil(q*float64(len(ms)))) - 1
		return round3(ms[min(len(ms)-1, max(0, i))])
	}
	return Percentiles{P50: at(0.5), P90: at(0.9), P99: at(0.99), Max: round3(ms[len(ms)-1]), N: len(ms)}
}

// sourceAddress is bench/clients.ts's: 250 different /24s.
func sourceAddress(k int) net.IP { return net.IPv4(127, 0, byte(k%250+1), 2) }

func sockjsIDs() (string, string) {
	var b [6]byte
	_, _ = rand.Read(b[:])
	var n [2]byte
	_, _ = rand.Read(n[:])
	return strconv.Itoa((int(n[0])<<8 | int(n[1])) % 1000), base64.RawURLEncoding.EncodeToString(b[:])
}

// ddpMessage is the part of a DDP message the client reads.
type ddpMessage struct {
	Msg     string          `json:"msg"`
	ID      *string         `json:"id"`
	Session string          `json:"session"`
	Error   json.RawMessage `json:"error"`
}

// client is one DDP session over either transport.
type client struct {
	send func(msgs []string) error // one SockJS send of these DDP messages
	// sendCall sends the 'echo' call `id` with a JSON-safe body; the transport builds its own wire
	// form (a ready-made websocket frame, or a message queued for the next xhr_send).
	sendCall func(id, body string) error
	close    func()
	mu       sync.Mutex
	pending  map[string]func(error)
	nextID   int
	connect  chan error
	dead     atomic.Bool
}

var errClosed = errors.New("connection closed")

// frame feeds one SockJS frame ('o', 'h', 'a[...]', 'c[...]').
func (c *client) frame(f []byte) {
	if len(f) == 0 {
		return
	}
	switch f[0] {
	case 'a':
		if c.results(f) {
			return
		}
		var msgs []string
		if err := json.Unmarshal(f[1:], &msgs); err != nil {
			return
		}
		for _, m := range msgs {
			c.message(m)
		}
	case 'c':
		c.finish()
	}
}

// Fast path of the hot loop: an 'a' frame holding only method results without errors, which is
// what Meteor and the reference app send for 'echo' (msg first, then id). Anything else, or any
// doubt, returns false and the frame goes through encoding/json.
var (
	resultHead = []byte(`"{\"msg\":\"result\",\"id\":\"`)
	idEnd      = []byte(`\"`)
	errorKey   = []byte(`\"error\"`)
)

func (c *client) results(f []byte) bool {
	if bytes.Contains(f, errorKey) || bytes.Count(f, []byte(`"{`)) != bytes.Count(f, resultHead) {
		return false
	}
	rest := f
	for {
		i := bytes.Index(rest, resultHead)
		if i < 0 {
			return true
		}
		rest = rest[i+len(resultHead):]
		j := bytes.Index(rest, idEnd)
		if j < 0 {
			return true
		}
		c.mu.Lock()
		done := c.pending[string(rest[:j])]
		delete(c.pending, string(rest[:j]))
		c.mu.Unlock()
		if done != nil {
			done(nil)
		}
		rest = rest[j:]
	}
}

func (c *client) message(text string) {
	var m ddpMessage
	if err := json.Unmarshal([]byte(text), &m); err != nil {
		return
	}
	switch m.Msg {
	case "result":
		if m.ID == nil {
			return
		}
		c.mu.Lock()
		done := c.pending[*m.ID]
		delete(c.pending, *m.ID)
		c.mu.Unlock()
		if done != nil {
			if len(m.Error) > 0 {
				done(fmt.Errorf("method error %s", m.Error))
			} else {
				done(nil)
			}
		}
	case "connected":
		select {
		case c.connect <- nil:
		default:
		}
	case "ping":
		pong := `{"msg":"pong"}`
		if m.ID != nil {
			b, _ := json.Marshal(map[string]string{"msg": "pong", "id": *m.ID})
			pong = string(b)
		}
		_ = c.send([]string{pong})
	}
}

func (c *client) finish() {
	if c.dead.Swap(true) {
		return
	}
	c.mu.Lock()
	p := c.pending
	c.pending = map[string]func(error){}
	c.mu.Unlock()
	for _, done := range p {
		done(errClosed)
	}
	select {
	case c.connect <- errClosed:
	default:
	}
}

// call sends one 'echo' method call; done runs once with its outcome (on the reading goroutine).
func (c *client) call(body string, done func(error)) {
	if c.dead.Load() {
		done(errClosed)
		return
	}
	c.mu.Lock()
	c.nextID++
	id := strconv.Itoa(c.nextID)
	c.pending[id] = done
	c.mu.Unlock()
	if err := c.sendCall(id, body); err != nil {
		c.close() // a failed write means the connection is gone: finish() fails every pending call
	}
}

const ddpConnect = `{"msg":"connect","version":"1","support":["1","pre2","pre1"]}`

func dialer(k int) *net.Dialer {
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: sourceAddress(k)}, Timeout: opTimeout}
}

// info does GET <entry>/sockjs/info and returns the SockJS base to use.
func info(hc *http.Client, entry string) (string, error) {
	res, err := hc.Get(entry + "/sockjs/info")
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return "", err
	}
	if res.StatusCode != 200 {
		return "", fmt.Errorf("info answered %d", res.StatusCode)
	}
	var v struct {
		BaseURL *string `json:"base_url"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return "", err
	}
	if v.BaseURL != nil {
		return *v.BaseURL, nil
	}
	return entry + "/sockjs", nil
}

func httpClient(k int, maxConns int) *http.Client {
	jar, _ := cookiejar.New(nil)
	tr := &http.Transport{
		DialContext:         dialer(k).DialContext,
		MaxConnsPerHost:     maxConns,
		MaxIdleConnsPerHost: maxConns,
		IdleConnTimeout:     4 * time.Second,
		DisableCompression:  true,
	}
	return &http.Client{Transport: tr, Jar: jar, Timeout: 60 * time.Second}
}

func openWs(k int, entry string) (*client, error) {
	hc := httpClient(k, 1)
	base, err := info(hc, entry)
	hc.CloseIdleConnections()
	if err != nil {
		return nil, err
	}
	server, session := sockjsIDs()
	u := strings.Replace(base, "http", "ws", 1) + "/" + server + "/" + session + "/websocket"
	d := websocket.Dialer{NetDial: dialer(k).Dial, HandshakeTimeout: opTimeout, Jar: hc.Jar, ReadBufferSize: 16 << 10, WriteBufferSize: 16 << 10}
	conn, res, err := d.Dial(u, nil)
	if err != nil {
		if res != nil {
			return nil, fmt.Errorf("upgrade refused: HTTP %d", res.StatusCode)
		}
		return nil, err
	}
	c := &client{pending: map[string]func(error){}, connect: make(chan error, 1)}
	var wmu sync.Mutex
	write := func(b []byte) error {
		counted()
		wmu.Lock()
		defer wmu.Unlock()
		return conn.WriteMessage(websocket.TextMessage, b)
	}
	c.send = func(msgs []string) error {
		b, _ := json.Marshal(msgs)
		return write(b)
	}
	// The body is JSON-safe (bench payloads are 'x's): the frame is built, not marshalled.
	c.sendCall = func(id, body string) error {
		return write([]byte(`["{\"msg\":\"method\",\"id\":\"` + id + `\",\"method\":\"echo\",\"params\":[\"` + body + `\"]}"]`))
	}
	c.close = func() {
		_ = conn.Close()
		c.finish()
	}
	_ = conn.SetReadDeadline(time.Now().Add(opTimeout))
	_, first, err := conn.ReadMessage()
	if err != nil || string(first) != "o" {
		conn.Close()
		return nil, fmt.Errorf("unexpected first frame %q (%v)", first, err)
	}
	_ = conn.SetReadDeadline(time.Time{})
	go func() {
		for {
			_, f, err := conn.ReadMessage()
			if err != nil {
				c.finish()
				return
			}
			c.frame(f)
		}
	}()
	return c, handshake(c)
}

func handshake(c *client) error {
	if err := c.send([]string{ddpConnect}); err != nil {
		c.close()
		return err
	}
	select {
	case err := <-c.connect:
		if err != nil {
			c.close()
		}
		return err
	case <-time.After(opTimeout):
		c.close()
		return errors.New("DDP connect timed out")
	}
}

func openXhr(k int, entry string) (*client, error) {
	hc := httpClient(k, 2)
	base, err := info(hc, entry)
	if err != nil {
		return nil, err
	}
	server, session := sockjsIDs()
	url := base + "/" + server + "/" + session
	post := func(ctx context.Context, path string, body []byte) (int, []byte, error) {
		req, _ := http.NewRequestWithContext(ctx, "POST", url+path, bytes.NewReader(body))
		if body != nil {
			req.Header.Set("Content-Type", "text/plain;charset=UTF-8")
		}
		counted()
		res, err := hc.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		return res.StatusCode, b, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	st, b, err := post(ctx, "/xhr", nil)
	if err != nil || st != 200 || len(b) == 0 || b[0] != 'o' {
		cancel()
		return nil, fmt.Errorf("xhr open answered %d %q (%v)", st, b, err)
	}
	c := &client{pending: map[string]func(error){}, connect: make(chan error, 1)}
	// Like sockjs-client: one xhr_send at a time; messages queued meanwhile go in the next one.
	var omu sync.Mutex
	var outbox []string
	sending := false
	var flush func()
	flush = func() {
		for {
			omu.Lock()
			if len(outbox) == 0 || c.dead.Load() {
				sending = false
				omu.Unlock()
				return
			}
			batch := outbox
			outbox = nil
			omu.Unlock()
			body, _ := json.Marshal(batch)
			tctx, tcancel := context.WithTimeout(ctx, opTimeout)
			st, _, err := post(tctx, "/xhr_send", body)
			tcancel()
			if err != nil || st != 204 {
				c.finish()
				return
			}
		}
	}
	c.sendCall = func(id, body string) error {
		return c.send([]string{`{"msg":"method","id":"` + id + `","method":"echo","params":["` + body + `"]}`})
	}
	c.send = func(msgs []string) error {
		if c.dead.Load() {
			return errClosed
		}
		omu.Lock()
		outbox = append(outbox, msgs...)
		start := !sending
		sending = true
		omu.Unlock()
		if start {
			go flush()
		}
		return nil
	}
	c.close = func() {
		cancel()
		c.finish()
		hc.CloseIdleConnections()
	}
	go func() {
		for !c.dead.Load() {
			st, b, err := post(ctx, "/xhr", nil)
			if err != nil || st != 200 {
				c.finish()
				return
			}
			for _, line := range bytes.Split(b, []byte{'\n'}) {
				c.frame(line)
			}
		}
	}()
	return c, handshake(c)
}

func entryFor(job *Job, k int) string {
	n := len(job.Entries)
	if job.Pick == "random" {
		var b [1]byte
		_, _ = rand.Read(b[:])
		return job.Entries[int(b[0])%n]
	}
	return job.Entries[k%n]
}

// openMany opens job.Sessions sessions, at most 32 handshakes at a time, within 60 s.
func openMany(job *Job) ([]*client, int, string) {
	var mu sync.Mutex
	var clients []*client
	errs := 0
	firstErr := ""
	next := int64(-1)
	deadline := time.Now().Add(60 * time.Second)
	var wg sync.WaitGroup
	for w := 0; w < min(32, job.Sessions); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(atomic.AddInt64(&next, 1))
				if k >= job.Sessions || time.Now().After(deadline) {
					return
				}
				var c *client
				var err error
				if job.Transport == "ws" {
					c, err = openWs(k, entryFor(job, k))
				} else {
					c, err = openXhr(k, entryFor(job, k))
				}
				mu.Lock()
				if err != nil {
					errs++
					if firstErr == "" {
						firstErr = err.Error()
					}
				} else {
					clients = append(clients, c)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return clients, errs, firstErr
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// window is a job's open sessions and its timeline: warm-up from start, measured from measureFrom
// to end (marked on stdout and counted by `requests`).
type window struct {
	clients                 []*client
	openErrs                int
	body                    string
	start, measureFrom, end time.Time
}

func openWindow(job *Job) (*window, error) {
	clients, openErrs, firstErr := openMany(job)
	if len(clients) == 0 {
		return nil, fmt.Errorf("no session opened: %s", firstErr)
	}
	w := &window{clients: clients, openErrs: openErrs, body: strings.Repeat("x", job.PayloadBytes), start: time.Now()}
	w.measureFrom = w.start.Add(time.Duration(job.WarmupMs) * time.Millisecond)
	w.end = w.measureFrom.Add(time.Duration(job.DurationMs) * time.Millisecond)
	time.AfterFunc(time.Until(w.measureFrom), func() { measuring.Store(true); mark("start") })
	time.AfterFunc(time.Until(w.end), func() { measuring.Store(false) })
	return w, nil
}

func throughput(job *Job) (map[string]any, error) {
	w, err := openWindow(job)
	if err != nil {
		return nil, err
	}
	clients, openErrs, body, measureFrom, end := w.clients, w.openErrs, w.body, w.measureFrom, w.end
	var mu sync.Mutex
	var samples []float64
	done, errs := 0, 0
	var wg sync.WaitGroup
	// Closed loop: every session keeps `depth` calls in flight until the end.
	var loop func(c *client)
	loop = func(c *client) {
		t0 := time.Now()
		if t0.After(end) {
			wg.Done()
			return
		}
		c.call(body, func(err error) {
			t1 := time.Now()
			if !t0.Before(measureFrom) {
				mu.Lock()
				if err != nil {
					errs++
				} else if !t1.After(end) {
					done++
					if len(samples) < 200_000 {
						samples = append(samples, ms(t1.Sub(t0)))
					}
				}
				mu.Unlock()
			}
			if err != nil && c.dead.Load() {
				wg.Done()
				return
			}
			// Outside the reading goroutine's stack for xhr's sender; cheap for ws.
			loop(c)
		})
	}
	for _, c := range clients {
		for i := 0; i < job.Depth; i++ {
			wg.Add(1)
			go loop(c)
		}
	}
	waitBounded(&wg, time.Until(end)+opTimeout+time.Second)
	mark("end")
	for _, c := range clients {
		c.close()
	}
	mu.Lock()
	defer mu.Unlock()
	return map[string]any{
		"kind": "throughput", "callsPerSec": round3(float64(done) / (float64(job.DurationMs) / 1000)), "errors": errs,
		"ms": percentiles(samples), "opened": len(clients), "openErrors": openErrs,
		"requestsPerCall": round3(float64(requests.Load()) / math.Max(1, float64(done))),
	}, nil
}

func latency(job *Job) (map[string]any, error) {
	w, err := openWindow(job)
	if err != nil {
		return nil, err
	}
	clients, openErrs, body, start, measureFrom, end := w.clients, w.openErrs, w.body, w.start, w.measureFrom, w.end
	var mu sync.Mutex
	var samples []float64
	errs, late, sent := 0, 0, 0
	var wg sync.WaitGroup
	// Open loop: calls are sent on schedule whether or not earlier ones were answered.
	tick := time.NewTicker(time.Millisecond)
	for now := range tick.C {
		if now.After(end) {
			break
		}
		due := int(now.Sub(start).Seconds()*float64(job.Rate)) - sent
		if due > 5 {
			late += due - 5
		}
		for i := 0; i < due; i++ {
			c := clients[sent%len(clients)]
			sent++
			t0 := time.Now()
			measured := !t0.Before(measureFrom)
			wg.Add(1)
			c.call(body, func(err error) {
				if measured {
					mu.Lock()
					if err != nil {
						errs++
					} else {
						samples = append(samples, ms(time.Since(t0)))
					}
					mu.Unlock()
				}
				wg.Done()
			})
		}
	}
	tick.Stop()
	waitBounded(&wg, opTimeout+500*time.Millisecond)
	for _, c := range clients {
		c.close()
	}
	mu.Lock()
	defer mu.Unlock()
	return map[string]any{
		"kind": "latency", "offered": job.Rate, "achieved": round3(float64(len(samples)) / (float64(job.DurationMs) / 1000)),
		"errors": errs, "late": late, "ms": percentiles(samples), "opened": len(clients), "openErrors": openErrs,
	}, nil
}

func waitBounded(wg *sync.WaitGroup, d time.Duration) {
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(d):
	}
}

func cpuSec() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: loadgen-go '<job json>'")
		os.Exit(2)
	}
	var job Job
	if err := json.Unmarshal([]byte(os.Args[1]), &job); err != nil || len(job.Entries) == 0 || job.Sessions <= 0 || job.DurationMs <= 0 {
		fmt.Fprintf(os.Stderr, "loadgen-go: bad job %q (%v)\n", os.Args[1], err)
		os.Exit(2)
	}
	if job.Transport != "ws" && job.Transport != "xhr" {
		fmt.Fprintf(os.Stderr, "loadgen-go: transport must be ws or xhr, not %q\n", job.Transport)
		os.Exit(2)
	}
	// Hard bound, whatever happens.
	time.AfterFunc(time.Duration(job.WarmupMs+job.DurationMs)*time.Millisecond+180*time.Second, func() {
		fmt.Fprintln(os.Stderr, "loadgen-go: job overran its bound")
		os.Exit(3)
	})
	if f := os.Getenv("LOADGEN_CPUPROFILE"); f != "" {
		pf, err := os.Create(f)
		if err == nil && pprof.StartCPUProfile(pf) == nil {
			defer pprof.StopCPUProfile()
		}
	}
	var res map[string]any
	var err error
	switch job.Kind {
	case "throughput":
		if job.Depth <= 0 {
			job.Depth = 1
		}
		res, err = throughput(&job)
	case "latency":
		res, err = latency(&job)
	default:
		err = fmt.Errorf("kind must be throughput or latency, not %q", job.Kind)
	}
	if err != nil {
		emit(map[string]string{"type": "error", "message": err.Error()})
		pprof.StopCPUProfile()
		os.Exit(1)
	}
	emit(map[string]any{"type": "result", "result": res, "cpuSec": cpuSec()})
}

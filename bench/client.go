package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ErrConfig reports a bad client configuration.
var ErrConfig = errors.New("bench: bad configuration")

// Endpoint is which API the load generator speaks.
type Endpoint string

const (
	EndpointGenerate    Endpoint = "generate"    // the reference's POST /generate
	EndpointCompletions Endpoint = "completions" // OpenAI /v1/completions
	EndpointChat        Endpoint = "chat"        // OpenAI /v1/chat/completions
)

// paths are the routes of each endpoint, most specific first so suffix
// matching finds chat before completions.
var paths = []struct {
	ep   Endpoint
	path string
}{
	{EndpointChat, "/v1/chat/completions"},
	{EndpointCompletions, "/v1/completions"},
	{EndpointGenerate, "/generate"},
}

// ParseEndpoint accepts the endpoint names (and their route spellings).
func ParseEndpoint(s string) (Endpoint, error) {
	switch strings.ToLower(strings.Trim(s, "/ ")) {
	case "generate":
		return EndpointGenerate, nil
	case "completions", "completion", "v1/completions":
		return EndpointCompletions, nil
	case "chat", "chat/completions", "v1/chat/completions":
		return EndpointChat, nil
	}
	return "", fmt.Errorf("%w: endpoint %q (want generate, completions or chat)", ErrConfig, s)
}

// splitURL returns the server's base URL (scheme, host and any prefix) and
// the endpoint the URL's path names, if it names one.
func splitURL(raw string) (base string, ep Endpoint, err error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil || u.Scheme == "" || u.Host == "" {
		return "", "", fmt.Errorf("%w: url %q (want http://host:port[/path])", ErrConfig, raw)
	}
	p := strings.TrimRight(u.Path, "/")
	for _, c := range paths {
		if strings.HasSuffix(p, c.path) {
			p, ep = strings.TrimSuffix(p, c.path), c.ep
			break
		}
	}
	if ep == "" && p != "" {
		// An unknown path: keep it as a prefix only if it is not the route
		// itself; we cannot tell, so the host alone is the safer base.
		p = ""
	}
	u.Path, u.RawQuery, u.Fragment = p, "", ""
	return strings.TrimRight(u.String(), "/"), ep, nil
}

// GuessEndpoint names the endpoint a URL points at; ok is false when its
// path names none.
func GuessEndpoint(raw string) (ep Endpoint, ok bool) {
	_, ep, err := splitURL(raw)
	return ep, err == nil && ep != ""
}

// ClientOptions configure a Client.
type ClientOptions struct {
	// URL is the endpoint's URL or the server's base URL.
	URL string
	// Endpoint overrides what the URL implies; "" guesses, defaulting to
	// generate (the reference's).
	Endpoint Endpoint
	Model    string // OpenAI "model"; may be empty for /generate
	APIKey   string // sent as a bearer token when set
	Stream   bool
	// IgnoreEOS asks the server to generate exactly max_tokens.
	IgnoreEOS   bool
	Temperature float64
	TopP        float64 // 0 = not sent
	TopK        int     // 0 = not sent
	// JSONSchema, when set, constrains every request's output to this JSON
	// Schema (OpenAI's response_format json_schema, strict); completions
	// and chat only.
	JSONSchema json.RawMessage
	Timeout    time.Duration
	// HTTP is the client to use; nil builds one that keeps enough idle
	// connections for high concurrency.
	HTTP *http.Client
}

// Client sends one request at a time per call of Do; it is safe for
// concurrent use.
type Client struct {
	opts ClientOptions
	base string
	url  string
	ep   Endpoint
	hc   *http.Client
}

// NewClient checks opts and builds a Client.
func NewClient(opts ClientOptions) (*Client, error) {
	base, urlEP, err := splitURL(opts.URL)
	if err != nil {
		return nil, err
	}
	ep := opts.Endpoint
	if ep == "" {
		ep = urlEP
	}
	if ep == "" {
		ep = EndpointGenerate
	}
	if _, err := ParseEndpoint(string(ep)); err != nil {
		return nil, err
	}
	if len(opts.JSONSchema) > 0 {
		if ep == EndpointGenerate {
			return nil, fmt.Errorf("a JSON schema needs the completions or chat endpoint, not %s", ep)
		}
		if !json.Valid(opts.JSONSchema) {
			return nil, fmt.Errorf("the JSON schema is not valid JSON")
		}
	}
	c := &Client{opts: opts, base: base, ep: ep, hc: opts.HTTP}
	for _, p := range paths {
		if p.ep == ep {
			c.url = base + p.path
		}
	}
	if c.hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConns = 4096
		tr.MaxIdleConnsPerHost = 4096
		c.hc = &http.Client{Transport: tr}
	}
	return c, nil
}

// BaseURL is the server's root (for /health, /metrics, /v1/models).
func (c *Client) BaseURL() string { return c.base }

// URL is where requests go.
func (c *Client) URL() string { return c.url }

// Endpoint is the API in use.
func (c *Client) Endpoint() Endpoint { return c.ep }

// HTTPClient is the underlying client, shared with the metrics scraper.
func (c *Client) HTTPClient() *http.Client { return c.hc }

// SetModel sets the OpenAI model name (used after asking /v1/models).
func (c *Client) SetModel(m string) { c.opts.Model = m }

func (c *Client) body(it Item) ([]byte, error) {
	b := map[string]any{
		"max_tokens":  it.MaxTokens,
		"temperature": c.opts.Temperature,
		"stream":      c.opts.Stream,
	}
	if c.opts.TopP > 0 {
		b["top_p"] = c.opts.TopP
	}
	if c.opts.TopK > 0 {
		b["top_k"] = c.opts.TopK
	}
	if c.opts.IgnoreEOS {
		b["ignore_eos"] = true
	}
	if len(c.opts.JSONSchema) > 0 {
		b["response_format"] = map[string]any{"type": "json_schema",
			"json_schema": map[string]any{"name": "loadgen", "schema": c.opts.JSONSchema, "strict": true}}
	}
	switch c.ep {
	case EndpointChat:
		b["messages"] = []map[string]string{{"role": "user", "content": it.Prompt}}
	default:
		b["prompt"] = it.Prompt
	}
	if c.ep != EndpointGenerate {
		if c.opts.Model != "" {
			b["model"] = c.opts.Model
		}
		if c.opts.Stream {
			b["stream_options"] = map[string]any{"include_usage": true}
		}
	}
	return json.Marshal(b)
}

// Do sends it and measures the response. Failures are reported in the
// Result, never retried: a 429 is Rejected.
func (c *Client) Do(ctx context.Context, it Item) (res Result) {
	body, err := c.body(it)
	if err != nil {
		return Result{Start: time.Now(), Err: err.Error()}
	}
	if c.opts.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.opts.Timeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return Result{Start: time.Now(), Err: err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	if c.opts.Stream {
		req.Header.Set("Accept", "text/event-stream")
	}
	if c.opts.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.opts.APIKey)
	}
	res.Start = time.Now()
	defer func() {
		if res.Latency == 0 {
			res.Latency = time.Since(res.Start)
		}
		if res.OK && res.PromptTokens == 0 {
			res.PromptTokens = it.PromptTokens
		}
	}()
	resp, err := c.hc.Do(req)
	if err != nil {
		res.Err = errString(ctx, err)
		return res
	}
	defer resp.Body.Close()
	res.StatusCode = resp.StatusCode
	if resp.StatusCode == http.StatusTooManyRequests {
		res.Rejected = true
		res.Err = "HTTP 429"
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return res
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		res.Err = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, errorMessage(msg))
		return res
	}
	ct := resp.Header.Get("Content-Type")
	if c.opts.Stream && !strings.HasPrefix(ct, "application/json") {
		c.readStream(ctx, resp.Body, &res)
	} else {
		c.readJSON(ctx, resp.Body, &res)
	}
	return res
}

// wireEvent is the union of every response and stream event shape we read:
// /generate's flat fields and OpenAI's choices and usage.
type wireEvent struct {
	Text             *string  `json:"text"`
	FinishReason     *string  `json:"finish_reason"`
	PromptTokens     *int     `json:"prompt_tokens"`
	CompletionTokens *int     `json:"completion_tokens"`
	TTFTms           *float64 `json:"ttft_ms"`
	Choices          []struct {
		Text  string `json:"text"`
		Delta struct {
			Content          string `json:"content"`
			ReasoningContent string `json:"reasoning_content"`
		} `json:"delta"`
		Message struct {
			Content string `json:"content"`
		} `json:"message"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
	} `json:"usage"`
	Error json.RawMessage `json:"error"`
}

func (e *wireEvent) text() string {
	var s string
	if e.Text != nil {
		s = *e.Text
	}
	for _, c := range e.Choices {
		s += c.Text + c.Delta.ReasoningContent + c.Delta.Content + c.Message.Content
	}
	return s
}

func (e *wireEvent) finish() string {
	if e.FinishReason != nil && *e.FinishReason != "" {
		return *e.FinishReason
	}
	for _, c := range e.Choices {
		if c.FinishReason != nil && *c.FinishReason != "" {
			return *c.FinishReason
		}
	}
	return ""
}

// usage returns the server's token counts, when the event has them.
func (e *wireEvent) usage() (prompt, completion int, ok bool) {
	if e.Usage != nil {
		return e.Usage.PromptTokens, e.Usage.CompletionTokens, true
	}
	if e.CompletionTokens != nil {
		if e.PromptTokens != nil {
			prompt = *e.PromptTokens
		}
		return prompt, *e.CompletionTokens, true
	}
	return 0, 0, false
}

func (e *wireEvent) errorText() string {
	if len(e.Error) == 0 || string(e.Error) == "null" {
		return ""
	}
	return errorMessage([]byte(`{"error":` + string(e.Error) + `}`))
}

func (c *Client) readJSON(ctx context.Context, body io.Reader, res *Result) {
	data, err := io.ReadAll(body)
	res.Latency = time.Since(res.Start)
	if err != nil {
		res.Err = errString(ctx, err)
		return
	}
	var ev wireEvent
	if err := json.Unmarshal(data, &ev); err != nil {
		res.Err = "bad JSON response: " + err.Error()
		return
	}
	if msg := ev.errorText(); msg != "" {
		res.Err = msg
		return
	}
	text := ev.text()
	if p, n, ok := ev.usage(); ok {
		res.PromptTokens, res.OutputTokens, res.OutputFromServer = p, n, true
	} else {
		res.OutputTokens = EstimateTokens(text)
	}
	if ev.TTFTms != nil && *ev.TTFTms > 0 {
		res.TTFT = time.Duration(*ev.TTFTms * float64(time.Millisecond))
	}
	res.FinishReason = ev.finish()
	res.OK = true
}

func (c *Client) readStream(ctx context.Context, body io.Reader, res *Result) {
	var (
		last     time.Time
		events   int
		done     bool
		haveUse  bool
		finished string
	)
	err := ReadSSE(body, func(data []byte) bool {
		now := time.Now()
		if bytes.Equal(bytes.TrimSpace(data), []byte("[DONE]")) {
			done = true
			return false
		}
		var ev wireEvent
		if err := json.Unmarshal(data, &ev); err != nil {
			return true // tolerate keep-alives and unknown payloads
		}
		if msg := ev.errorText(); msg != "" {
			res.Err = msg
			return false
		}
		if ev.text() != "" {
			if events == 0 {
				res.TTFT = now.Sub(res.Start)
			} else {
				res.ITL = append(res.ITL, now.Sub(last))
			}
			last = now
			events++
		}
		if p, n, ok := ev.usage(); ok {
			res.PromptTokens, res.OutputTokens, haveUse = p, n, true
		}
		if f := ev.finish(); f != "" {
			finished = f
		}
		return true
	})
	res.Latency = time.Since(res.Start)
	res.FinishReason = finished
	switch {
	case res.Err != "":
	case err != nil:
		res.Err = errString(ctx, err)
	case !done && finished == "":
		res.Err = "stream ended without finish_reason or [DONE]"
	default:
		res.OK = true
		res.OutputFromServer = haveUse
		if !haveUse {
			res.OutputTokens = events
		}
	}
}

// ReadSSE calls fn with the data of each server-sent event in r until fn
// returns false or r ends. It follows the SSE framing (data lines joined by
// newlines, dispatched at a blank line) and, to tolerate servers that omit
// the blank line, also dispatches buffered data that is already complete
// JSON when the next data line starts.
func ReadSSE(r io.Reader, fn func(data []byte) bool) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	var buf []byte
	have := false
	flush := func() bool {
		if !have {
			return true
		}
		ok := fn(buf)
		buf, have = buf[:0], false
		return ok
	}
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			if !flush() {
				return nil
			}
			continue
		}
		if line[0] == ':' { // comment / keep-alive
			continue
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		if string(field) != "data" {
			continue // event:, id:, retry:
		}
		value = bytes.TrimPrefix(value, []byte(" "))
		if have && json.Valid(buf) {
			if !flush() {
				return nil
			}
		}
		if have {
			buf = append(buf, '\n')
		}
		buf = append(buf, value...)
		have = true
	}
	if err := sc.Err(); err != nil {
		return err
	}
	flush()
	return nil
}

// errorMessage extracts a readable message from an error body: OpenAI's
// {"error":{"message"}}, {"error":"..."}, {"detail":"..."} or raw text.
func errorMessage(body []byte) string {
	var v struct {
		Error  json.RawMessage `json:"error"`
		Detail any             `json:"detail"`
	}
	msg := strings.TrimSpace(string(body))
	if json.Unmarshal(body, &v) == nil {
		var s string
		var o struct {
			Message string `json:"message"`
		}
		switch {
		case json.Unmarshal(v.Error, &o) == nil && o.Message != "":
			msg = o.Message
		case json.Unmarshal(v.Error, &s) == nil && s != "":
			msg = s
		case v.Detail != nil:
			msg = fmt.Sprint(v.Detail)
		}
	}
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	return msg
}

// errString names a transport error, calling a deadline a timeout.
func errString(ctx context.Context, err error) string {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	if errors.Is(err, context.Canceled) {
		return "canceled"
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return err.Error()
}

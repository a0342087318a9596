package server_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/llmserve/llmserve/engine"
	"github.com/llmserve/llmserve/internal/shareddata"
	llmmodel "github.com/llmserve/llmserve/model"
	_ "github.com/llmserve/llmserve/model/models"
	"github.com/llmserve/llmserve/sample"
	"github.com/llmserve/llmserve/server"
	"github.com/llmserve/llmserve/tokenizer"
)

// BenchmarkC1Overhead measures what the HTTP path adds to a decode at
// concurrency 1 on the CPU: one engine (dummy Qwen2.5-0.5B weights, the
// Qwen tokenizer, detokenizing) serves, alternately, a request submitted
// to the engine directly and the same request streamed through the server
// on loopback (/v1/completions, token-id prompt). TPOT is the time from the
// first to the last token over the tokens between, as a client sees it;
// the metrics are the medians over the rounds and http/engine, their ratio.
//
//	go test ./server -run '^$' -bench C1Overhead -benchtime 5x
func BenchmarkC1Overhead(b *testing.B) {
	const promptLen, outLen = 16, 64
	tok, err := tokenizer.LoadDir(filepath.Join(shareddata.Dir(b), "tokenizers", "qwen3"))
	if err != nil {
		b.Fatal(err)
	}
	m, err := llmmodel.Load("Qwen/Qwen2.5-0.5B", llmmodel.LoadOptions{LoadFormat: "dummy"})
	if err != nil {
		b.Skipf("model: %v", err)
	}
	defer m.Close()
	eng, err := engine.New(m, engine.Options{MaxNumSeqs: 4, MaxModelLen: 512, NumBlocks: 64, Detokenizer: tok})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	srv, err := server.New(server.Options{Engine: eng, Tokenizer: tok, ModelNames: []string{"m"}, MaxModelLen: 512,
		VocabSize: m.Config().VocabSize})
	if err != nil {
		b.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()

	prompt := make([]int, promptLen)
	for i := range prompt {
		prompt[i] = 1000 + 37*i
	}
	direct := func() (time.Duration, error) {
		p := sample.Defaults()
		p.Temperature, p.MaxTokens, p.IgnoreEOS = 0, outLen, true
		ch, err := eng.Submit(ctx, &engine.Request{PromptIDs: prompt, Params: p})
		if err != nil {
			return 0, err
		}
		var stamps []time.Time
		for o := range ch {
			for range o.TokenIDs {
				stamps = append(stamps, time.Now())
			}
		}
		return tpot(stamps, outLen)
	}
	ids := strings.Trim(strings.Join(strings.Fields(fmt.Sprint(prompt)), ","), "[]")
	// Token ids in the events: an event's text can hold back bytes of an
	// unfinished character, so events are not tokens.
	body := fmt.Sprintf(`{"prompt":[%s],"max_tokens":%d,"temperature":0,"ignore_eos":true,"stream":true,"return_token_ids":true}`,
		ids, outLen)
	overHTTP := func() (time.Duration, error) {
		resp, err := http.Post(ts.URL+"/v1/completions", "application/json", strings.NewReader(body))
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			return 0, fmt.Errorf("status %d", resp.StatusCode)
		}
		var stamps []time.Time
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			l, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok || !strings.HasPrefix(l, "{") {
				continue
			}
			// Counted without decoding the event: the reader shares the
			// CPU with the engine, as little of it as a remote client.
			now := time.Now()
			_, ids, ok := strings.Cut(l, `"token_ids":[`)
			if !ok {
				continue
			}
			ids, _, _ = strings.Cut(ids, "]")
			for range strings.Count(ids, ",") + 1 {
				stamps = append(stamps, now)
			}
		}
		return tpot(stamps, outLen)
	}
	var eng1, http1 []time.Duration
	for b.Loop() {
		d, err := direct()
		if err != nil {
			b.Fatal(err)
		}
		h, err := overHTTP()
		if err != nil {
			b.Fatal(err)
		}
		eng1, http1 = append(eng1, d), append(http1, h)
	}
	slices.Sort(eng1)
	slices.Sort(http1)
	me, mh := eng1[len(eng1)/2], http1[len(http1)/2]
	b.ReportMetric(float64(me.Microseconds())/1e3, "engine-tpot-ms")
	b.ReportMetric(float64(mh.Microseconds())/1e3, "http-tpot-ms")
	b.ReportMetric(float64(mh)/float64(me), "http/engine")
}

// tpot is the mean time between consecutive tokens of one sequence, from
// the time each token reached the reader.
func tpot(stamps []time.Time, want int) (time.Duration, error) {
	if len(stamps) != want {
		return 0, fmt.Errorf("%d token stamps, want %d", len(stamps), want)
	}
	return stamps[len(stamps)-1].Sub(stamps[0]) / time.Duration(len(stamps)-1), nil
}

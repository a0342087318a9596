package main

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
)

// TestLiveHardening runs issue 17's requests against the real stack (the
// real engine behind the API edge, --max-num-seqs 8, a 512-token
// vocabulary): each bad one is a 400 naming its field in the server's
// words, and a 64-string stop list still stops where it should.
func TestLiveHardening(t *testing.T) {
	l := startLive(t)
	for _, c := range []struct{ path, body, param string }{
		{"/v1/completions", `{"prompt":[1,2],"max_tokens":9223372036854775807}`, "max_tokens"},
		{"/v1/completions", `{"prompt":[1,2],"max_tokens":9223372036854775806}`, "max_tokens"},
		{"/generate", `{"prompt":[1,2],"min_tokens":9223372036854775807}`, "min_tokens"},
		{"/v1/completions", `{"prompt":[1,2],"max_tokens":2,"n":9}`, "n"},
		{"/v1/completions", `{"prompt":[1,2],"max_tokens":2,"repetition_penalty":101}`, "repetition_penalty"},
		{"/v1/completions", `{"prompt":[1,null],"max_tokens":2}`, "prompt"},
		{"/v1/completions", `{"prompt":[1,2],"stop_token_ids":[null],"max_tokens":2}`, "stop_token_ids"},
		{"/v1/completions", `{"prompt":[1,2],"stop_token_ids":[512],"max_tokens":2}`, "stop_token_ids"},
		{"/v1/completions", `{"prompt":[1,2],"logprobs":21,"max_tokens":2}`, "logprobs"},
	} {
		code, b := l.post(t, c.path, c.body)
		var e struct {
			Error struct {
				Message string  `json:"message"`
				Param   *string `json:"param"`
			} `json:"error"`
		}
		if err := json.Unmarshal(b, &e); err != nil || code != 400 || e.Error.Param == nil || *e.Error.Param != c.param ||
			strings.Contains(e.Error.Message, "engine") || strings.Contains(e.Error.Message, "sample:") {
			t.Errorf("%s %s: %d %s", c.path, c.body, code, b)
		}
	}
	// vLLM accepts repetition_penalty 3, and so does the sampler.
	if code, b := l.post(t, "/v1/completions", `{"prompt":[1,2],"max_tokens":2,"repetition_penalty":3,"n":8}`); code != 200 {
		t.Fatalf("repetition_penalty 3, n 8: %d %s", code, b)
	}

	// Stop strings through the automaton: the greedy text without them,
	// then with 63 strings that never occur and one from its middle.
	type choice struct {
		Text         string `json:"text"`
		FinishReason string `json:"finish_reason"`
		StopReason   any    `json:"stop_reason"`
	}
	var resp struct {
		Choices []choice `json:"choices"`
	}
	body := `{"prompt":` + idsJSON(l.golden.PromptIDs) + `,"max_tokens":24,"temperature":0,"ignore_eos":true`
	code, b := l.post(t, "/v1/completions", body+`}`)
	if code != 200 || json.Unmarshal(b, &resp) != nil {
		t.Fatalf("%d %s", code, b)
	}
	full := resp.Choices[0].Text
	stop := ""
	for i := len(full) / 3; i+3 <= len(full) && stop == ""; i++ {
		if w := full[i : i+3]; strings.Trim(w, "abcdefghijklmnopqrstuvwxyz ") == "" {
			stop = w // plain ASCII, so that JSON carries it as is
		}
	}
	if stop == "" {
		t.Fatalf("no ASCII window in the greedy text %q", full)
	}
	stops := make([]string, 0, 64)
	for i := range 63 {
		stops = append(stops, "\x01never"+strconv.Itoa(i))
	}
	stops = append(stops, stop)
	sj, _ := json.Marshal(stops)
	code, b = l.post(t, "/v1/completions", body+`,"stop":`+string(sj)+`}`)
	if code != 200 || json.Unmarshal(b, &resp) != nil {
		t.Fatalf("%d %s", code, b)
	}
	c := resp.Choices[0]
	if want := full[:strings.Index(full, stop)]; c.Text != want || c.FinishReason != "stop" || c.StopReason != stop {
		t.Fatalf("stop %q in %q: got %+v, want text %q", stop, full, c, want)
	}
	// One string more is refused.
	sj, _ = json.Marshal(append(stops, "x"))
	if code, b := l.post(t, "/v1/completions", body+`,"stop":`+string(sj)+`}`); code != 400 || !strings.Contains(string(b), `"param":"stop"`) {
		t.Fatalf("65 stop strings: %d %s", code, b)
	}
}

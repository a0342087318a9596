package server_test

import (
	"errors"
	"strings"
	"testing"

	oai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/llmserve/llmserve/server"
)

// The official OpenAI Go SDK as a client, over a real loopback server.
func sdkClient(e *env, key string) oai.Client {
	return oai.NewClient(option.WithBaseURL(e.ts.URL+"/v1/"), option.WithAPIKey(key), option.WithMaxRetries(0))
}

func TestSDKCompletions(t *testing.T) {
	e := newEnv(t, nil, func(o *server.Options) { o.APIKey = "k1" })
	c := sdkClient(e, "k1")
	ctx := ctxT(t)
	params := oai.CompletionNewParams{
		Model:     model,
		Prompt:    oai.CompletionNewParamsPromptUnion{OfString: oai.String("hello")},
		MaxTokens: oai.Int(7),
		Logprobs:  oai.Int(1),
		N:         oai.Int(2),
	}
	resp, err := c.Completions.New(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Choices) != 2 || resp.Choices[0].Text != "hellohe" || resp.Choices[1].Text != "ellohel" ||
		string(resp.Choices[0].FinishReason) != "length" || resp.Usage.CompletionTokens != 14 || resp.Usage.PromptTokens != 5 {
		t.Fatalf("%+v", resp)
	}
	if lp := resp.Choices[0].Logprobs; len(lp.Tokens) != 7 || lp.Tokens[0] != "h" || lp.TokenLogprobs[0] != -0.25 {
		t.Fatalf("logprobs %+v", lp)
	}

	params.StreamOptions = oai.ChatCompletionStreamOptionsParam{IncludeUsage: oai.Bool(true)}
	stream := c.Completions.NewStreaming(ctx, params)
	texts := map[int64]string{}
	var usage oai.CompletionUsage
	for stream.Next() {
		ch := stream.Current()
		for _, choice := range ch.Choices {
			texts[choice.Index] += choice.Text
		}
		if ch.Usage.TotalTokens > 0 {
			usage = ch.Usage
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if texts[0] != "hellohe" || texts[1] != "ellohel" || usage.TotalTokens != 19 {
		t.Fatalf("texts %v usage %+v", texts, usage)
	}

	// Errors come back as *oai.Error with status and message.
	_, err = c.Completions.New(ctx, oai.CompletionNewParams{Model: "nope", Prompt: params.Prompt})
	var apiErr *oai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || !strings.Contains(apiErr.Message, "nope") {
		t.Fatalf("unknown model: %v", err)
	}
	bad := sdkClient(e, "wrong")
	_, err = bad.Completions.New(ctx, params)
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 401 {
		t.Fatalf("bad key: %v", err)
	}
}

func TestSDKChat(t *testing.T) {
	e := newEnv(t, nil, nil)
	c := sdkClient(e, "unused")
	ctx := ctxT(t)
	params := oai.ChatCompletionNewParams{
		Model:       model,
		Messages:    []oai.ChatCompletionMessageParamUnion{oai.SystemMessage("be brief"), oai.UserMessage("hi")},
		MaxTokens:   oai.Int(5),
		Logprobs:    oai.Bool(true),
		TopLogprobs: oai.Int(2),
		Seed:        oai.Int(1),
	}
	resp, err := c.Chat.Completions.New(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	msg := resp.Choices[0].Message
	if string(msg.Role) != "assistant" || msg.Content != "<syst" || resp.Choices[0].FinishReason != "length" || resp.Usage.CompletionTokens != 5 {
		t.Fatalf("%+v", resp)
	}
	if lc := resp.Choices[0].Logprobs.Content; len(lc) != 5 || lc[1].Token != "s" || len(lc[1].TopLogprobs) != 2 {
		t.Fatalf("logprobs %+v", resp.Choices[0].Logprobs)
	}
	if e.eng.Requests()[0].Params.Seed == nil {
		t.Fatal("seed lost")
	}

	params.StreamOptions = oai.ChatCompletionStreamOptionsParam{IncludeUsage: oai.Bool(true)}
	stream := c.Chat.Completions.NewStreaming(ctx, params)
	acc := oai.ChatCompletionAccumulator{}
	chunks := 0
	for stream.Next() {
		acc.AddChunk(stream.Current())
		chunks++
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if chunks < 3 || len(acc.Choices) != 1 || acc.Choices[0].Message.Content != "<syst" ||
		acc.Choices[0].FinishReason != "length" || acc.Usage.TotalTokens != resp.Usage.TotalTokens {
		t.Fatalf("%d chunks, accumulated %+v", chunks, acc.ChatCompletion)
	}
}

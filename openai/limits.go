package openai

// Request limits that are not flags, in one place. They are generous for
// real clients (OpenAI allows 4 stop sequences; vLLM sets no limit) and small
// enough that one request cannot stall the engine's step loop for everyone
// (each stop token id and logit_bias entry is looked at for every token of
// every sequence) or make the server allocate without bound. Past them a
// request gets a 400 that names the field and the limit.
const (
	MaxStop         = 64   // stop strings in one request
	MaxStopBytes    = 256  // bytes in one stop string
	MaxStopTokenIDs = 256  // stop_token_ids entries
	MaxLogitBias    = 1024 // logit_bias entries
	MaxN            = 128  // n; also at most --max-num-seqs (a prompt's n sequences run in one batch)
	// MaxChoices bounds n × prompts of one request, the sequences it runs
	// (also at most --max-concurrent-requests, which counts sequences).
	MaxChoices = 4096
)

// Limits are the server's settings a request is checked against.
type Limits struct {
	VocabSize   int // token ids must be in [0, VocabSize); 0 = unchecked
	MaxLogprobs int // top logprobs per token (--max-logprobs); 0 means 20 (vLLM's default)
	// MaxNumSeqs is the engine's batch size (--max-num-seqs): n above it
	// could never be scheduled. 0 = only MaxN applies.
	MaxNumSeqs int
}

func (l Limits) maxLogprobs() int {
	if l.MaxLogprobs <= 0 {
		return 20
	}
	return l.MaxLogprobs
}

func (l Limits) maxN() int {
	if l.MaxNumSeqs > 0 && l.MaxNumSeqs < MaxN {
		return l.MaxNumSeqs
	}
	return MaxN
}

package openai

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strconv"
)

// TokenIDs is a JSON list of token ids. Unlike []int, which encoding/json
// fills with 0 for a null element, it accepts only integers: a null, a
// fraction or a string inside is a decoding error naming its index.
type TokenIDs []int

// UnmarshalJSON accepts null (no list) or a list of integers.
func (t *TokenIDs) UnmarshalJSON(b []byte) error {
	ids, err := parseIDs(b)
	if err != nil {
		return &json.UnmarshalTypeError{Value: err.Error(), Type: reflect.TypeFor[TokenIDs]()}
	}
	*t = ids
	return nil
}

// idsError describes what made a JSON value not a list of token ids.
type idsError string

func (e idsError) Error() string { return string(e) }

// parseIDs parses null or a JSON list of integers. encoding/json has
// checked the syntax when it calls an UnmarshalJSON, but this does not rely
// on it: anything else is an error, never a panic.
func parseIDs(b []byte) ([]int, error) {
	b = trimJSONSpace(b)
	if string(b) == "null" {
		return nil, nil
	}
	if len(b) < 2 || b[0] != '[' || b[len(b)-1] != ']' {
		return nil, idsError(jsonValueKind(b))
	}
	in := trimJSONSpace(b[1 : len(b)-1])
	if len(in) == 0 {
		return []int{}, nil
	}
	ids := make([]int, 0, bytes.Count(in, []byte{','})+1)
	for i := 0; ; {
		for i < len(in) && isJSONSpace(in[i]) {
			i++
		}
		start := i
		if i < len(in) && in[i] == '-' {
			i++
		}
		for i < len(in) && in[i] >= '0' && in[i] <= '9' {
			i++
		}
		if i < len(in) && (in[i] == '.' || in[i] == 'e' || in[i] == 'E') {
			end := i
			for end < len(in) && in[end] != ',' && !isJSONSpace(in[end]) {
				end++
			}
			return nil, idsError("number " + string(in[start:end]) + " at index " + strconv.Itoa(len(ids)))
		}
		id, err := strconv.Atoi(string(in[start:i]))
		if err != nil {
			what := jsonValueKind(in[start:])
			if start < i {
				what = "number " + string(in[start:i]) // out of range
			}
			return nil, idsError(what + " at index " + strconv.Itoa(len(ids)))
		}
		ids = append(ids, id)
		for i < len(in) && isJSONSpace(in[i]) {
			i++
		}
		if i == len(in) {
			return ids, nil
		}
		if in[i] != ',' {
			return nil, idsError("malformed list")
		}
		i++
	}
}

func isJSONSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func trimJSONSpace(b []byte) []byte {
	for len(b) > 0 && isJSONSpace(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && isJSONSpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

// LogitBias is the logit_bias object: token id (as a string) to bias. Unlike
// map[string]float64, which encoding/json fills with 0 for a null value, a
// null value is a decoding error.
type LogitBias map[string]float64

// UnmarshalJSON accepts null (no biases) or an object of numbers.
func (l *LogitBias) UnmarshalJSON(b []byte) error {
	var m map[string]*float64
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	if m == nil {
		*l = nil
		return nil
	}
	out := make(LogitBias, len(m))
	for k, v := range m {
		if v == nil {
			return &json.UnmarshalTypeError{Value: "null for token " + strconv.Quote(k), Type: reflect.TypeFor[LogitBias]()}
		}
		out[k] = *v
	}
	*l = out
	return nil
}

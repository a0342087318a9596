package grammar

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error Compile returns wraps exactly one of them, so
// the HTTP layer can map them with errors.Is (all are the client's fault:
// 400) without parsing messages.
var (
	// ErrSyntax: the schema, regex or grammar text is malformed.
	ErrSyntax = errors.New("grammar: syntax error")
	// ErrUnsupported: well-formed, but uses a feature this engine lacks.
	ErrUnsupported = errors.New("grammar: unsupported feature")
	// ErrLimit: the input or its compiled form exceeds a Limits bound.
	ErrLimit = errors.New("grammar: limit exceeded")
	// ErrEmpty: the grammar can match no string at all.
	ErrEmpty = errors.New("grammar: matches nothing")
	// ErrLeftRecursion: a rule reaches itself without consuming input;
	// a top-down matcher cannot run it.
	ErrLeftRecursion = errors.New("grammar: left recursion")

	// ErrRejected is returned by Matcher.Accept for a token (or bytes) the
	// grammar does not allow here; the matcher is left unchanged.
	ErrRejected = errors.New("grammar: token rejected")
	// ErrRollback: Rollback asked for more tokens than the matcher keeps.
	ErrRollback = errors.New("grammar: cannot roll back that far")
)

func errorf(kind error, format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{kind}, args...)...)
}

package chattemplate

import "strings"

// lstripBlocks applies Jinja's lstrip_blocks to the source: spaces and tabs
// between the start of a line and a block or comment tag ({% or {#, not
// {%+) are removed. gonja's own option also strips them when the tag
// follows other content on the line ("{{ x }} {% if %}"), which Jinja does
// not, so it is done here instead. Tag bodies (with their string literals)
// and {% raw %} sections are left alone.
func lstripBlocks(src string) string {
	var sb strings.Builder
	sb.Grow(len(src))
	lineStart := true // only spaces/tabs since the last newline outside tags
	pending := 0      // start in src of those spaces/tabs
	i := 0
	for i < len(src) {
		c := src[i]
		if c == '{' && i+1 < len(src) && (src[i+1] == '%' || src[i+1] == '#' || src[i+1] == '{') {
			open := src[i+1]
			if lineStart && open != '{' && !(i+2 < len(src) && src[i+2] == '+') {
				// Drop the indentation written so far on this line.
				out := sb.String()
				sb.Reset()
				sb.WriteString(out[:len(out)-(i-pending)])
			}
			end := tagEnd(src, i, open)
			tag := src[i:end]
			sb.WriteString(tag)
			i = end
			lineStart = false
			if open == '%' && isRawStart(tag) {
				// Copy {% raw %} ... {% endraw %} verbatim.
				j := rawEnd(src, i)
				sb.WriteString(src[i:j])
				i = j
			}
			continue
		}
		sb.WriteByte(c)
		switch {
		case c == '\n':
			lineStart, pending = true, i+1
		case c == ' ' || c == '\t':
		default:
			lineStart = false
		}
		i++
	}
	return sb.String()
}

// tagEnd returns the index just past the tag opened at src[i:] ({%, {{ or
// {#), skipping string literals inside {% and {{ tags; len(src) if unclosed.
func tagEnd(src string, i int, open byte) int {
	closeCh := open
	if open == '{' {
		closeCh = '}'
	}
	j := i + 2
	for j < len(src) {
		c := src[j]
		if open != '#' && (c == '"' || c == '\'') {
			j++
			for j < len(src) && src[j] != c {
				if src[j] == '\\' {
					j++
				}
				j++
			}
			j++
			continue
		}
		if c == closeCh && j+1 < len(src) && src[j+1] == '}' {
			return j + 2
		}
		j++
	}
	return len(src)
}

func isRawStart(tag string) bool {
	body := strings.Trim(tag[2:len(tag)-min(2, len(tag)-2)], "-+ \t\r\n")
	return body == "raw"
}

// rawEnd returns the index of the {% endraw %} tag at or after i.
func rawEnd(src string, i int) int {
	for j := i; j < len(src); {
		k := strings.Index(src[j:], "{%")
		if k < 0 {
			return len(src)
		}
		j += k
		end := tagEnd(src, j, '%')
		if strings.Trim(src[j+2:max(j+2, end-2)], "-+ \t\r\n") == "endraw" {
			return j
		}
		j += 2
	}
	return len(src)
}

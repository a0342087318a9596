package grammar

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// pydanticPets is what pydantic writes for a discriminated union
// (Cat | Dog with Field(discriminator="pet_type")).
const pydanticPets = `{"$defs":{
 "Cat":{"properties":{"pet_type":{"const":"cat","title":"Pet Type","type":"string"},"meows":{"title":"Meows","type":"integer"}},"required":["pet_type","meows"],"title":"Cat","type":"object"},
 "Dog":{"properties":{"pet_type":{"const":"dog","title":"Pet Type","type":"string"},"barks":{"title":"Barks","type":"number"}},"required":["pet_type","barks"],"title":"Dog","type":"object"}},
 "properties":{"pet":{"discriminator":{"mapping":{"cat":"#/$defs/Cat","dog":"#/$defs/Dog"},"propertyName":"pet_type"},
  "oneOf":[{"$ref":"#/$defs/Cat"},{"$ref":"#/$defs/Dog"}],"title":"Pet"}},
 "required":["pet"],"title":"Model","type":"object"}`

func TestOneOfDisjointAccept(t *testing.T) {
	runAcceptCases(t, []acceptCase{
		{"types", Spec{JSONSchema: `{"oneOf":[{"type":"string"},{"type":"null"},{"type":"array","items":{"type":"integer"}}]}`},
			[]string{`"a"`, `null`, `[1]`}, []string{`1`, `{}`}},
		{"consts", Spec{JSONSchema: `{"oneOf":[{"const":"a"},{"enum":["b",1]},{"const":1.5}]}`},
			[]string{`"a"`, `"b"`, `1`, `1.5`}, []string{`"c"`, `2`}},
		{"pydantic discriminated union", Spec{JSONSchema: pydanticPets},
			[]string{`{"pet":{"pet_type":"cat","meows":3}}`, `{"pet":{"pet_type":"dog","barks":1.5}}`},
			[]string{`{"pet":{"pet_type":"cat","barks":1.5}}`, `{"pet":{"pet_type":"bird","meows":3}}`}},
		{"closed objects, different required keys", Spec{JSONSchema: `{"oneOf":[
			{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"],"additionalProperties":false},
			{"type":"object","properties":{"b":{"type":"integer"}},"required":["b"],"additionalProperties":false}]}`},
			[]string{`{"a":1}`, `{"b":2}`}, []string{`{"a":1,"b":2}`, `{}`}},
		{"numeric ranges", Spec{JSONSchema: `{"type":"number","oneOf":[{"maximum":0},{"exclusiveMinimum":0,"maximum":10},{"minimum":20}]}`},
			[]string{`-1`, `0`, `0.5`, `10`, `20`}, []string{`15`}},
		{"nested discriminator through allOf", Spec{JSONSchema: `{"oneOf":[
			{"allOf":[{"type":"object","properties":{"kind":{"enum":["x","y"]}},"required":["kind"]},{"properties":{"v":{"type":"string"}}}]},
			{"type":"object","properties":{"kind":{"enum":["z"]}},"required":["kind"]}]}`},
			[]string{`{"kind":"x"}`, `{"kind":"z"}`}, []string{`{"kind":"w"}`}},
	})
}

// wideRefs is a small schema that $refs make a tree of 10^16 leaves, each
// the schema leaf: a proof that walked it all would never end.
func wideRefs(leaf string) string {
	var defs []string
	for i := range 16 {
		refs := strings.Repeat(fmt.Sprintf(`{"$ref":"#/$defs/a%d"},`, i+1), 10)
		defs = append(defs, fmt.Sprintf(`"a%d":{"anyOf":[%s]}`, i, strings.TrimSuffix(refs, ",")))
	}
	defs = append(defs, `"a16":`+leaf)
	return `"$defs":{` + strings.Join(defs, ",") + `}`
}

func TestOneOfNotProvablyDisjoint(t *testing.T) {
	for name, schema := range map[string]string{
		"exponential refs":       `{` + wideRefs(`{"type":"string"}`) + `,"oneOf":[{"$ref":"#/$defs/a0"},{"type":"string"}]}`,
		"integer and number":     `{"oneOf":[{"type":"integer"},{"type":"number"}]}`,
		"untyped branch":         `{"oneOf":[{"type":"string"},{"properties":{"a":{"type":"integer"}}}]}`,
		"open objects":           `{"oneOf":[{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]},{"type":"object","properties":{"b":{"type":"integer"}},"required":["b"]}]}`,
		"optional discriminator": `{"oneOf":[{"type":"object","properties":{"k":{"const":"a"}}},{"type":"object","properties":{"k":{"const":"b"}}}]}`,
		"equal numbers":          `{"oneOf":[{"const":1},{"enum":[2,1.0]}]}`,
		"equal objects":          `{"oneOf":[{"const":{"a":1,"b":2}},{"const":{"b":2,"a":1}}]}`,
		"overlapping ranges":     `{"oneOf":[{"type":"integer","maximum":5},{"type":"integer","minimum":5}]}`,
		"true branch":            `{"oneOf":[true,{"type":"string"}]}`,
		// Each level branches three ways: the proof budget, not the depth, ends it.
		"recursive, same branch twice": `{"$defs":{"A":{"type":"object","properties":{"p":{"$ref":"#/$defs/A"},"q":{"$ref":"#/$defs/A"},"r":{"$ref":"#/$defs/A"}},"required":["p","q","r"]}},"oneOf":[{"$ref":"#/$defs/A"},{"$ref":"#/$defs/A"}]}`,
		"nested in items":              `{"type":"array","items":{"oneOf":[{"type":"string"},{"type":"string","maxLength":2}]}}`,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Compile(Spec{JSONSchema: schema}, nil, Limits{})
			if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "oneOf") {
				t.Fatalf("got %v, want ErrUnsupported naming oneOf", err)
			}
		})
	}
}

func TestUniqueItems(t *testing.T) {
	runAcceptCases(t, []acceptCase{
		{"false is no constraint", Spec{JSONSchema: `{"type":"array","items":{"type":"integer"},"uniqueItems":false}`},
			[]string{`[1,1]`}, nil},
		{"at most one item", Spec{JSONSchema: `{"type":"array","items":{"type":"integer"},"maxItems":1,"uniqueItems":true}`},
			[]string{`[]`, `[1]`}, []string{`[1,1]`, `[1,2]`}},
		{"tuple of one", Spec{JSONSchema: `{"type":"array","prefixItems":[{"type":"string"}],"items":false,"uniqueItems":true}`},
			[]string{`[]`, `["a"]`}, []string{`["a","a"]`}},
		{"enum items", Spec{JSONSchema: `{"type":"array","items":{"type":"string","enum":["r","g","b"]},"uniqueItems":true}`},
			[]string{`[]`, `["r"]`, `["g", "r"]`, `["b","r","g"]`, "[\n  \"r\",\n  \"g\"\n]"},
			[]string{`["r","r"]`, `["r","g","r"]`, `["r","g","b","r"]`, `["x"]`}},
		{"enum items with bounds", Spec{JSONSchema: `{"type":"array","items":{"enum":[1,2,3,4]},"minItems":2,"maxItems":3,"uniqueItems":true}`},
			[]string{`[1,2]`, `[4,3,1]`}, []string{`[1]`, `[1,1]`, `[1,2,3,4]`, `[2,2,3]`}},
		{"equal enum values are one item", Spec{JSONSchema: `{"type":"array","items":{"enum":[1,1.0,2]},"uniqueItems":true}`},
			[]string{`[1,2]`, `[2,1]`}, []string{`[1,1.0]`, `[1.0,1]`, `[1,1]`}},
		{"anyOf of consts", Spec{JSONSchema: `{"type":"array","items":{"anyOf":[{"const":"a"},{"const":"b"}]},"uniqueItems":true}`},
			[]string{`["a","b"]`, `["b"]`}, []string{`["a","a"]`}},
		{"enum filtered by type", Spec{JSONSchema: `{"type":"string","enum":["a",1,"b"]}`},
			[]string{`"a"`, `"b"`}, []string{`1`}},
		{"integer const", Spec{JSONSchema: `{"type":"integer","enum":[1.0,1.5,2]}`},
			[]string{`1.0`, `2`}, []string{`1.5`}},
	})
}

func TestUniqueItemsRefused(t *testing.T) {
	for name, c := range map[string]struct {
		schema string
		want   error
	}{
		"free strings":       {`{"type":"array","items":{"type":"string"},"uniqueItems":true}`, ErrUnsupported},
		"no items":           {`{"type":"array","uniqueItems":true,"maxItems":2}`, ErrUnsupported},
		"untyped":            {`{"uniqueItems":true}`, ErrUnsupported},
		"prefix":             {`{"type":"array","prefixItems":[{"const":1},{"const":2}],"uniqueItems":true}`, ErrUnsupported},
		"too many item sets": {`{"type":"array","items":{"enum":[0,1,2,3,4,5,6,7,8,9,10,11,12,13]},"uniqueItems":true}`, ErrLimit},
		"not a boolean":      {`{"type":"array","uniqueItems":"yes"}`, ErrSyntax},
		"exponential refs":   {`{` + wideRefs(`{"enum":["x"]}`) + `,"type":"array","items":{"$ref":"#/$defs/a0"},"uniqueItems":true}`, ErrLimit},
		"huge enum":          {`{"type":"array","items":{"enum":[` + strings.Repeat(`"x",`, 5000) + `"y"]},"uniqueItems":true}`, ErrLimit},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Compile(Spec{JSONSchema: c.schema}, nil, Limits{})
			if !errors.Is(err, c.want) || (c.want != ErrSyntax && !strings.Contains(err.Error(), "uniqueItems")) {
				t.Fatalf("got %v, want %v naming uniqueItems", err, c.want)
			}
		})
	}
}

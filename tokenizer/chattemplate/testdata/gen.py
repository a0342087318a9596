"""Regenerates cases.json: expected renderings of chat templates, made with
Python's jinja2 set up as transformers' apply_chat_template does.

Run from this directory: python3 gen.py /path/to/shared/testdata
"""
import json, sys
from datetime import datetime
import jinja2
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment


class AssistantTracker(Extension):
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def compile_template(src):
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[AssistantTracker, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(src)


TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Météo actuelle — “quoted” <b>",
        "parameters": {"type": "object", "properties": {
            "location": {"type": "string", "description": "City"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7.5}},
            "required": ["location"]}}},
    {"type": "function", "function": {"name": "noop", "parameters": {}}},
]

CASES = {
    "qwen3": [
        {"name": "tools", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"}],
         "tools": TOOLS, "add_generation_prompt": True},
        {"name": "tool_calls", "messages": [
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"location": "Paris", "unit": "celsius"}}},
                {"type": "function", "function": {"name": "get_weather", "arguments": "{\"location\": \"Oslo\"}"}}]},
            {"role": "tool", "content": "{\"temp\": 21}"},
            {"role": "tool", "content": "{\"temp\": 9}"}],
         "tools": TOOLS, "add_generation_prompt": True},
        {"name": "reasoning", "messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
            {"role": "user", "content": "3+3?"},
            {"role": "assistant", "content": "<think>\nagain\n</think>\n\n6"}],
         "add_generation_prompt": False},
        {"name": "reasoning_content", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello", "reasoning_content": "greet back"}],
         "add_generation_prompt": False, "enable_thinking": True},
        {"name": "no_thinking", "messages": [
            {"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
         "add_generation_prompt": True, "enable_thinking": False},
    ],
    "custom": [
        {"name": "mixed", "messages": [
            {"role": "system", "content": "  sys  "},
            {"role": "user", "content": [{"type": "text", "text": "look: "}, {"type": "image"}]},
            {"role": "assistant", "content": "ok", "tool_calls": [
                {"function": {"name": "f", "arguments": {"z": 1, "a": "é", "m": [True, 2.5]}}}]},
            {"role": "tool", "name": "f", "content": "done"},
            {"role": "system", "content": "late system"},
            {"role": "user", "content": "Bye"}],
         "add_generation_prompt": True, "bos_token": "<s>", "eos_token": "</s>",
         "custom_tools": TOOLS[:1]},
        {"name": "bad_role", "messages": [{"role": "robot", "content": "x"}],
         "add_generation_prompt": False, "bos_token": "<s>", "eos_token": "</s>"},
    ],
}


def main():
    shared = sys.argv[1]
    templates = {
        "qwen3": json.load(open(f"{shared}/tokenizers/qwen3/tokenizer_config.json"))["chat_template"],
        "custom": open("custom.jinja").read(),
    }
    out = []
    for tname, cases in CASES.items():
        tpl = compile_template(templates[tname])
        for c in cases:
            kwargs = {k: v for k, v in c.items() if k not in ("name",)}
            try:
                text, err = tpl.render(**kwargs), None
            except jinja2.exceptions.TemplateError as e:
                text, err = None, str(e)
            out.append({"template": tname, "case": c, "text": text, "error": err})
    with open("cases.json", "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)


main()

"""Tool-call and reasoning parser names are checked against the names SGLang knows (an unknown
one, named in /parse_function_call's or /separate_reasoning's body, was a 500).
"""

from __future__ import annotations


def check_tool_call_parser(parser, *args, **kwargs) -> None:
    """BEFORE-hook of FunctionCallParser.__init__ (/parse_function_call names the parser in its
    body): the condition SGLang raises on, with the names it knows."""
    name = kwargs.get("tool_call_parser", args[1] if len(args) > 1 else None)
    known = type(parser).ToolCallParserEnum
    if name not in known:
        raise ValueError(f"tool_call_parser {name!r} is not a parser this server knows; one of: "
                         f"{', '.join(sorted(known))}")


def check_reasoning_parser(parser, *args, **kwargs) -> None:
    """BEFORE-hook of ReasoningParser.__init__ (/separate_reasoning names it in its body)."""
    name = kwargs.get("model_type", args[0] if args else None)
    known = type(parser).DetectorMap
    if not isinstance(name, str) or name.lower() not in known:
        raise ValueError(f"reasoning_parser {name!r} is not a parser this server knows; one of: "
                         f"{', '.join(sorted(known))}")

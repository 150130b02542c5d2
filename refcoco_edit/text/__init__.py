"""Prompt text: templates with exact spans, subjects of referring expressions, rephrasing rules and
the OpenAI-compatible LLM client that enriches prompts."""

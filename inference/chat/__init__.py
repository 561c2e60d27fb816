"""Chat logic with no UI in it: templates (messages -> prompt text -> ids) and the
conversation (turns, system prompt, context window). The TUI and a future server share it."""
from .conversation import Conversation, Message, ReplyPlan, Turn
from .templates import (TEMPLATE_NAMES, ChatTemplate, ChatTemplateError, builtin_template, continuation_ids,
                        guess_template, prompt_ids, rendered_text, resolve_template, template_warning)

__all__ = ["Conversation", "Message", "ReplyPlan", "Turn", "ChatTemplate", "ChatTemplateError", "continuation_ids",
           "TEMPLATE_NAMES", "builtin_template", "guess_template", "prompt_ids", "rendered_text",
           "resolve_template", "template_warning"]

"""Every action of the app as a plain function: `handler(ctx, username, state, *inputs)` returns
`(state, view)`, where `view` maps names of things on the page to what they should now show
(images as PIL, choices as `Choices`, prompts as highlight pieces, editor values as dicts).

Handlers never import gradio: the tabs translate views into component updates. A refusal is an
exception (`annotation_app.errors`, or a store error such as `ConflictError`), raised before
anything is written; the tabs show its message.
"""

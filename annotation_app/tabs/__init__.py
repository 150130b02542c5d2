"""One module per tab: each lays out its components and wires their events to the handlers.

Tabs hold no logic of their own: they read the user name from `gr.Request` (set by Gradio's
sign-in, never from a field on the page), call a handler, and turn its view into component updates.
"""

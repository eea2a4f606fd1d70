"""The vlm demo: one Gradio app with three tabs, chat, sketch to HTML, and caption and VQA.

    vlm demo --model runs/my-run        # http://127.0.0.1:7860, reachable from this machine only
    vlm demo --host 0.0.0.0             # from the network too: put it behind a proxy with auth and TLS

Safe by default: it binds the loopback address with no share link and no analytics; every request waits
in one bounded queue; uploads have a size limit and are decoded by vlm.images, so a broken or unsupported
file gets a one-line message; generated HTML is shown only inside an iframe sandboxed without
allow-scripts and allow-same-origin, so nothing the model writes can run in the demo's page.
"""

import ctypes
import html
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by gradio at run time too: no telemetry, no version check
import gradio as gr  # noqa: E402

from vlm.images import load_image  # noqa: E402

EXAMPLES = Path(__file__).parent / "examples"
MODEL = "model"  # the concurrency group of every event that runs the model
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Gradio keeps each session's component values in memory (about 0.1 MB here), up to this many sessions, the
# oldest dropped first. Nothing is lost with them: a conversation travels with each request.
SESSIONS = 200


def build_app(model, *, max_queue: int = 64) -> gr.Blocks:
    """The demo for a loaded vlm.VLM. Model calls run one at a time: the model keeps the images of the
    call in progress on itself, so two calls at once would mix them up."""
    # delete_cache: every 10 minutes, uploads older than an hour are deleted, so the disk cannot fill up
    with gr.Blocks(title="vlm demo", analytics_enabled=False, delete_cache=(600, 3600)) as app:
        gr.Markdown("# vlm\nA Flamingo-style vision-language model: chat about images, turn UI sketches into "
                    "HTML, caption pictures and answer questions about them.")
        with gr.Tab("Chat", id="chat"):
            chat_tab(model)
        with gr.Tab("Sketch to HTML", id="sketch"):
            sketch_tab(model)
        with gr.Tab("Caption and VQA", id="caption"):
            caption_tab(model)
    # max_size: a request beyond it is turned away at once ("queue full") rather than waiting without end
    return app.queue(default_concurrency_limit=1, max_size=max_queue)


def launch(model, *, host: str = "127.0.0.1", port: int = 7860, max_upload_mb: int = 10, max_queue: int = 64):
    """Serve the demo until Ctrl-C."""
    app = build_app(model, max_queue=max_queue)
    limit_malloc_arenas()
    _, url, _ = app.launch(server_name=host, server_port=port, share=False, max_file_size=f"{max_upload_mb}mb",
                           state_session_capacity=SESSIONS, run_history=False, mcp_server=False, pwa=False,
                           prevent_thread_lock=True, quiet=True)
    print(f"vlm demo: serving on {url}", flush=True)
    if host not in LOOPBACK:
        print(f"vlm demo: warning: bound to {host}: anyone who can reach this machine can use the model", flush=True)
    app.block_thread()


def limit_malloc_arenas(arenas: int = 2):
    """glibc gives busy threads malloc arenas of their own, up to 8 a core, and memory freed in one is not
    reused by another: with Gradio's workers taking turns, the server grew ~5 MB every 100 requests in the
    load test. Two arenas keep it flat, as MALLOC_ARENA_MAX=2 would (which, when set, is left to rule)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        ctypes.CDLL(None).mallopt(-8, arenas)  # -8: M_ARENA_MAX
    except AttributeError:  # not glibc (macOS, musl): nothing to limit
        pass


# --- Chat --------------------------------------------------------------------------------------


def chat_tab(model):
    chatbot = gr.Chatbot(label="Conversation", height=420, buttons=["copy", "copy_all"], feedback_options=None,
                         elem_id="chatbot")
    box = gr.MultimodalTextbox(placeholder="Attach, drop or paste an image, then ask about it",
                               file_types=["image"], file_count="multiple", sources=["upload"],
                               show_label=False, elem_id="chat-input")
    with gr.Row():
        retry = gr.Button("Retry", elem_id="chat-retry")
        gr.ClearButton([chatbot, box], elem_id="chat-clear")
    with gr.Accordion("Generation settings", open=False):
        max_new_tokens = gr.Slider(1, 512, value=model.generation_config.max_new_tokens, step=1, label="Max new tokens")
        sample = gr.Checkbox(label="Sample (greedy when off; Retry gives a new answer only when sampling)")
        temperature = gr.Slider(0.05, 2.0, value=1.0, label="Temperature")
        top_p = gr.Slider(0.05, 1.0, value=1.0, label="Top-p")
    gr.Examples([{"text": "What is in this picture?", "files": [str(EXAMPLES / "cat.jpg")]},
                 {"text": "How many buttons are there?", "files": [str(EXAMPLES / "sketch-cards.jpg")]}], inputs=box)

    def add_message(history, message):
        text, files = (message["text"] or "").strip(), message["files"]
        if not text and not files:
            raise gr.Error("Type a message or attach an image.")
        for path in files:
            open_image(path)  # a broken file is reported now, before it joins the conversation
        content = [{"path": path} for path in files] + ([text] if text else [])
        return [*history, {"role": "user", "content": content}], gr.MultimodalTextbox(value=None, interactive=False)

    def respond(history, max_new_tokens, sample, temperature, top_p):
        options = dict(max_new_tokens=int(max_new_tokens), do_sample=bool(sample), temperature=temperature, top_p=top_p)
        messages = vlm_messages(history)
        history = [*history, {"role": "assistant", "content": ""}]
        with shown_to_user():
            for piece in model.chat(messages, stream=True, **options):
                history[-1]["content"] += piece
                yield history
        if not history[-1]["content"]:
            history[-1]["content"] = "(no answer)"
            yield history

    def drop_answer(history):
        while history and history[-1]["role"] == "assistant":
            history = history[:-1]
        if not history:
            raise gr.Error("Nothing to retry yet.")
        return history, gr.MultimodalTextbox(interactive=False)

    settings = [max_new_tokens, sample, temperature, top_p]
    ready = dict(fn=lambda: gr.MultimodalTextbox(interactive=True), outputs=box, queue=False)
    box.submit(add_message, [chatbot, box], [chatbot, box], concurrency_limit=None, api_visibility="private").success(
        respond, [chatbot, *settings], chatbot, concurrency_id=MODEL, api_name="chat").then(**ready)
    retry.click(drop_answer, chatbot, [chatbot, box], concurrency_limit=None, api_visibility="private").success(
        respond, [chatbot, *settings], chatbot, concurrency_id=MODEL, api_visibility="private").then(**ready)


def vlm_messages(history: list[dict]) -> list[dict]:
    """Gradio's chat history (content parts: text, files) -> vlm's messages (parts: text, image)."""
    messages = []
    for message in history:
        parts = [{"type": "text", "text": part["text"]} if part["type"] == "text"
                 else {"type": "image", "image": open_image(part["file"]["path"])}
                 for part in message["content"] if part["type"] in ("text", "file")]
        messages.append({"role": message["role"], "content": parts})
    return messages


# --- Sketch to HTML ----------------------------------------------------------------------------


def sketch_tab(model):
    with gr.Row():
        with gr.Column():
            sketchpad = gr.Sketchpad(label="Sketch: draw here, or upload or paste a photo of a sketch", type="pil",
                                     sources=["upload", "clipboard"], canvas_size=(800, 600), elem_id="sketchpad")
            run = gr.Button("Generate HTML", variant="primary", elem_id="sketch-run")
            gr.Examples([[str(EXAMPLES / "sketch-landing.jpg")], [str(EXAMPLES / "sketch-cards.jpg")]], inputs=sketchpad)
        with gr.Column():
            preview = gr.HTML(iframe("<p style='font:14px sans-serif;color:#888'>The page appears here.</p>"),
                              label="Preview", js_on_load=None, elem_id="sketch-preview")
            code = gr.Code(language="html", label="HTML", buttons=["copy", "download"], elem_id="sketch-html")

    def to_html(sketch):
        image = (sketch or {}).get("composite")
        low, high = image.convert("L").getextrema() if image is not None else (0, 0)
        if low == high:
            raise gr.Error("Draw a sketch or upload a photo of one first.")
        with shown_to_user():
            page, caught = with_warnings(model.sketch_to_html, image)
        for warning in caught:  # the model wrote something that is not page DSL: say so
            gr.Warning(str(warning.message))
        return page, iframe(page)

    run.click(to_html, sketchpad, [code, preview], concurrency_id=MODEL, api_name="sketch_to_html")


def iframe(page: str) -> str:
    """`page` in an iframe whose sandbox allows nothing: no scripts, no forms, no popups, and an opaque
    origin, so it can neither run code nor reach the demo's page, cookies or storage."""
    return (f'<iframe sandbox="" srcdoc="{html.escape(page, quote=True)}" title="Preview of the generated page" '
            'referrerpolicy="no-referrer" style="width:100%;height:480px;border:1px solid #ccc;'
            'border-radius:6px;background:#fff"></iframe>')


# --- Caption and VQA ---------------------------------------------------------------------------


def caption_tab(model):
    with gr.Row():
        with gr.Column():
            image = gr.Image(label="Image", sources=["upload", "clipboard"], elem_id="caption-image")
            questions = gr.Textbox(label="Questions, one a line", lines=3, placeholder="What colour is the cat?",
                                   elem_id="caption-questions")
            run = gr.Button("Caption and answer", variant="primary", elem_id="caption-run")
            gr.Examples([[str(EXAMPLES / "cat.jpg"), "What animal is this?\nWhat colour is it?"],
                         [str(EXAMPLES / "sketch-landing.jpg"), "How many buttons are there?"]], inputs=[image, questions])
        with gr.Column():
            caption = gr.Textbox(label="Caption", interactive=False, elem_id="caption-text")
            answers = gr.Dataframe(headers=["Question", "Answer"], type="array", interactive=False, wrap=True,
                                   column_widths=["35%", "65%"], label="Answers", elem_id="caption-answers")

    def describe(upload, text):
        if not upload:
            raise gr.Error("Upload an image first.")
        picture = open_image(upload["path"])
        asked = [line.strip() for line in (text or "").splitlines() if line.strip()]
        with shown_to_user():
            said = model.caption(picture)
            replies = model.ask([picture] * len(asked), asked) if asked else []
        return said, [[question, reply] for question, reply in zip(asked, replies)]

    # preprocess=False: the handler gets the uploaded file as it came, and vlm.images decodes it, with its
    # format whitelist, pixel limit and clear messages (gr.Image's own decoding answers a broken file with "Error")
    run.click(describe, [image, questions], [caption, answers], preprocess=False, concurrency_id=MODEL, api_name="caption")


# --- errors the user can act on ----------------------------------------------------------------


def open_image(path: str):
    """The uploaded image, or a message naming the file as the user knows it (not gradio's cache path)."""
    try:
        return load_image(path)
    except ValueError as error:  # ImageError: missing, empty, truncated, not an image, too many pixels
        raise gr.Error(str(error).replace(str(path), Path(path).name)) from None


def with_warnings(fn, *args):
    """fn(*args) and the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        return fn(*args), caught


@contextmanager
def shown_to_user():
    """A ValueError from the model (too long a conversation, bad settings) becomes a message, not a trace."""
    try:
        yield
    except ValueError as error:
        raise gr.Error(str(error)) from None

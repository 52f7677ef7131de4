"""The vision agent: measures an image (format, size, colours, brightness, EXIF, OCR text).

Quality rule: 0.0 when the image could not be read; 1.0 when a question was asked and the
analysis answers it (e.g. OCR found text for "what does it say"), or no question was asked;
0.6 when a question needs more than measurement can give.
"""

from agents import heavy
from agents.core import ATTACHMENT, Agent, RunContext, Tool, ToolFailed, ToolOutcome
from agents.registry import register
from agents.tools.vision import InvalidImage, analyze_image_async


async def _analyze(arguments: dict, ctx: RunContext) -> ToolOutcome:
    if not ctx.attachment:
        raise ToolFailed("Attach an image to ask the vision agent about it.")
    try:
        analysis = await analyze_image_async(ctx.attachment, user=ctx.user, admitted=ctx.heavy_lease,
                                             question=arguments.get("question") or None)
    except InvalidImage as error:
        raise ToolFailed(str(error)) from None
    except heavy.Busy as busy:
        raise ToolFailed(f"busy: {busy.detail}") from None
    ctx.facts["vision"] = analysis
    return ToolOutcome(output=analysis.summary_markdown(), data=analysis.to_dict())


ANALYZE_IMAGE = Tool(
    name="analyze_image",
    description="Measure the attached image: format, size, dominant colours, brightness, EXIF and text (OCR).",
    parameters={"type": "object", "properties": {"question": {"type": "string"}}},
    call=_analyze,
    depends_on=frozenset({ATTACHMENT}),
)


@register
class VisionAgent(Agent):
    name = "vision"
    title = "Vision"
    description = "Analyses images: size, colours, brightness, EXIF, and text by OCR."
    tools = [ANALYZE_IMAGE]
    needs_attachment = True
    examples = ["What text is in this image?", "What are the main colours?", "When was this photo taken?"]
    without_model = "Measures an attached image: size, colours, EXIF and text by OCR; describing it needs a model."

    def runs_heavy_work(self, query, attachment):
        return bool(attachment)

    async def answer_locally(self, ctx):
        async for event in ctx.use(ANALYZE_IMAGE, {"question": ctx.query}):
            yield event
        if "vision" not in ctx.facts:
            yield f"I couldn't analyse that: {ctx.last_outcome.output}"
            return
        yield ctx.facts["vision"].summary_markdown()

    def quality(self, ctx, answer):
        analysis = ctx.facts.get("vision")
        if analysis is None:
            return 0.0
        if ctx.query.strip() and "needs a vision model" in answer:
            return 0.6
        return 1.0

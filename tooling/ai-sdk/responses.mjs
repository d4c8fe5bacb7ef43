// The Vercel AI SDK's default OpenAI provider, `openai(model)`, which calls the Responses
// API, aimed at meshgate. tests/test_responses_ai_sdk.py runs it and checks what it prints:
// one JSON object with the answers of generateText, streamText and a tool-calling run.
// Usage: MESHGATE_BASE_URL=http://127.0.0.1:8080/v1 MESHGATE_API_KEY=sk-... \
//        MESHGATE_MODEL=meshgate/reference-pro node tooling/ai-sdk/responses.mjs
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const openai = createOpenAI({
  baseURL: process.env.MESHGATE_BASE_URL,
  apiKey: process.env.MESHGATE_API_KEY,
});
const model = openai(process.env.MESHGATE_MODEL);
const prompt = "Hello there";

const generated = await generateText({ model, prompt, maxRetries: 0 });

const streamed = streamText({ model, prompt, maxRetries: 0 });
let streamedText = "";
for await (const delta of streamed.textStream) {
  streamedText += delta;
}

const cities = [];
const withTool = await generateText({
  model,
  prompt: "Use get_weather for Paris.",
  maxRetries: 0,
  stopWhen: stepCountIs(3),
  tools: {
    get_weather: tool({
      description: "The weather in a city.",
      inputSchema: z.object({ city: z.string() }),
      execute: async ({ city }) => {
        cities.push(city);
        return `Sunny and 21 degrees in ${city}.`;
      },
    }),
  },
});

console.log(
  JSON.stringify({
    generate: {
      text: generated.text,
      finishReason: generated.finishReason,
      usage: generated.usage,
      responseId: generated.response.id,
    },
    stream: {
      text: streamedText,
      finishReason: await streamed.finishReason,
      usage: await streamed.usage,
    },
    tool: {
      cities,
      steps: withTool.steps.map((step) => ({
        finishReason: step.finishReason,
        toolCalls: step.toolCalls.map((call) => call.toolName),
        text: step.text,
      })),
      text: withTool.text,
    },
  }),
);

// A stand-in inference API for trying the stack locally: answers every request with a small
// OpenAI-style completion and reports usage in x-usage-tokens-in / x-usage-tokens-out, the headers
// Envoy turns into the stream-done debit. Prompt tokens are estimated as bytes / 4.
import { createServer } from 'node:http';

const port = Number(process.env.PORT ?? 8000);

createServer((req, res) => {
  let bytes = 0;
  req.on('data', (chunk) => {
    bytes += chunk.length;
  });
  req.on('end', () => {
    const tokensIn = Math.max(1, Math.ceil(bytes / 4));
    const tokensOut = Math.min(16, Number(req.headers['x-max-tokens'] ?? 16) || 16);
    const body = JSON.stringify({
      id: `cmpl-${req.headers['x-request-id'] ?? 'local'}`,
      object: 'chat.completion',
      model: req.headers['x-model'] ?? 'unknown',
      choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
      usage: { prompt_tokens: tokensIn, completion_tokens: tokensOut, total_tokens: tokensIn + tokensOut },
    });
    res.writeHead(200, {
      'content-type': 'application/json',
      'x-usage-tokens-in': String(tokensIn),
      'x-usage-tokens-out': String(tokensOut),
    });
    res.end(body);
  });
}).listen(port, () => console.log(`stub upstream on :${port}`));

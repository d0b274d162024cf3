'use strict';
// Example: register a program, run it, hold a short conversation.
//
//   dspy-pool serve --lm sim &            # in another shell
//   node clients/node/example.js [HOST:PORT]

const { DSPyPoolClient, status } = require('./index.js');

async function main() {
  const target = process.argv[2] || process.env.DSPY_POOL_TARGET || '127.0.0.1:50051';
  const client = new DSPyPoolClient(target, { defaultDeadlineMs: 30000, retries: 2 });
  try {
    await client.waitForServing({ timeoutMs: 30000 });

    const program = await client.registerProgram({
      name: 'qa',
      signature: 'question -> answer',
      module: 'chain_of_thought',
      instructions: 'Answer in one sentence.',
    });
    console.log(`registered ${program.spec.name} v${program.version} (inputs: ${program.input_names.join(', ')})`);

    const result = await client.execute('qa', { question: 'What is DSPy?' }, { deadlineMs: 10000 });
    console.log('outputs:', result.outputs);
    console.log(`served by worker ${result.worker.id} (pid ${result.worker.pid}) in ${result.timings.total_ms.toFixed(1)} ms, ${result.usage.total_tokens} tokens`);

    // A conversation: the session is closed when the callback returns.
    await client.withSession(async (session) => {
      await session.execute('qa', { question: 'Name one DSPy module.' });
      await session.execute('qa', { question: 'And another?' });
      const stored = await session.get();
      console.log(`session ${session.id}: ${stored.turns.length} turns`);
    });

    try {
      await client.execute('missing', { question: 'x' });
    } catch (error) {
      if (error.code !== status.NOT_FOUND) throw error;
      console.log(`expected error: ${error.codeName} (${error.errorInfo && error.errorInfo.reason}): ${error.details}`);
    }
  } finally {
    client.close();
  }
}

main().catch((error) => {
  console.error(error.codeName ? `${error.codeName}: ${error.details}` : error);
  process.exit(1);
});

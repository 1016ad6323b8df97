// Run a TF.js graph model on inputs read from JSON, in Node, with @tensorflow/tfjs (pure JS, CPU backend).
//
//   node tfjs_predict.mjs MODEL_DIR INPUTS.json OUTPUTS.json
//
// MODEL_DIR holds model.json and its weight shards, as tensorflowjs' convert_tf_saved_model writes them.
// INPUTS.json:  {"inputs": {"<signature input>": {"dtype": "float32", "shape": [n, ...], "data": [flat]}}}
// OUTPUTS.json: {"runtime": "...", "outputs": {"<signature output>": {"dtype", "shape", "data"}}}
//
// The model is loaded through a small file IO handler written here (tfjs' own file:// handler lives in
// tfjs-node, whose install downloads a native library). Outputs go to a file, not stdout, because tfjs
// prints a notice about tfjs-node on stdout when it starts. Exit code 0 on success; on failure the
// reason is the last line of stderr and the exit code is 1.

import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import process from "node:process";

import * as tf from "@tensorflow/tfjs";

function fail(message) {
  process.stderr.write(`${message}\n`);
  process.exit(1);
}

// Resolve a shard path of the manifest inside the model directory; a path that climbs out is refused.
function inside(dir, relative) {
  const full = path.resolve(dir, relative);
  if (full !== dir && !full.startsWith(dir + path.sep)) {
    throw new Error(`weight shard ${JSON.stringify(relative)} points outside the model directory`);
  }
  return full;
}

function fileHandler(modelDir) {
  const dir = path.resolve(modelDir);
  return {
    async load() {
      const modelJSON = JSON.parse(await readFile(path.join(dir, "model.json"), "utf8"));
      return tf.io.getModelArtifactsForJSON(modelJSON, async (manifest) => {
        const specs = [];
        const buffers = [];
        for (const group of manifest) {
          specs.push(...group.weights);
          for (const shard of group.paths) {
            const bytes = await readFile(inside(dir, shard));
            buffers.push(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
          }
        }
        return [specs, tf.io.concatenateArrayBuffers(buffers)];
      });
    },
  };
}

async function main() {
  const [modelDir, inputsPath, outputsPath] = process.argv.slice(2);
  if (!modelDir || !inputsPath || !outputsPath) {
    fail("usage: node tfjs_predict.mjs MODEL_DIR INPUTS.json OUTPUTS.json");
  }
  await tf.setBackend("cpu");
  await tf.ready();
  const model = await tf.loadGraphModel(fileHandler(modelDir));

  const request = JSON.parse(await readFile(inputsPath, "utf8"));
  const signature = model.signature ?? {};
  const signatureInputs = signature.inputs ?? {};
  const signatureOutputs = signature.outputs ?? {};

  // Feed by graph node name: a signature key ("features") maps to its tensor ("features:0").
  const feed = {};
  for (const [key, spec] of Object.entries(request.inputs ?? {})) {
    const node = signatureInputs[key]?.name ?? key;
    feed[node.replace(/:0$/, "")] = tf.tensor(spec.data, spec.shape, spec.dtype ?? "float32");
  }

  const outputKeys = Object.keys(signatureOutputs).sort(naturalOrder);
  const outputNodes = outputKeys.length
    ? outputKeys.map((key) => signatureOutputs[key].name.replace(/:0$/, ""))
    : model.outputs.map((o) => o.name);
  const keys = outputKeys.length ? outputKeys : outputNodes;

  // executeAsync also runs graphs with control flow (while loops, conditionals).
  let results = await model.executeAsync(feed, outputNodes);
  if (!Array.isArray(results)) results = [results];

  const outputs = {};
  for (let i = 0; i < results.length; i += 1) {
    const tensor = results[i];
    outputs[keys[i]] = { dtype: tensor.dtype, shape: tensor.shape, data: Array.from(await tensor.data()) };
  }
  const runtime = `@tensorflow/tfjs ${tf.version.tfjs} (${tf.getBackend()} backend, node ${process.versions.node})`;
  await writeFile(outputsPath, JSON.stringify({ runtime, outputs }));
}

// output_0, output_1, ..., output_10: the order model.export() and the converters use.
function naturalOrder(a, b) {
  return a.localeCompare(b, "en", { numeric: true });
}

main().catch((error) => fail(`tfjs: ${error?.message ?? error}`));

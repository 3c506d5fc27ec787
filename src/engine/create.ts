/**
 * Builds the engine a slot computes with, loading only the one asked for (tfjs and its backends are not
 * loaded by an onnx run). Apart from engine.ts, which the engines themselves import: imports stay one way.
 */
import type { ModelSpec } from '../model/spec.js';
import type { Engine, EngineOptions } from './engine.js';

/**
 * What a process does once before its engines open, in its main thread (the options then travel to its
 * worker threads): for --device webgpu, find the adapter (named at start, refused when it is a software
 * one unless allowed) and make the word its threads take turns on the device by (onnx: the sessions of
 * a process share one device; tfjs makes a device of its own in each thread).
 */
export async function prepareEngine(options: EngineOptions): Promise<EngineOptions> {
  if (options.device !== 'webgpu' || options.webgpu) return options;
  const { requireWebGpuAdapter } = await import('./webgpu/adapter.js');
  const { newTurnWord } = await import('./webgpu/turns.js');
  return { ...options, webgpu: { adapter: requireWebGpuAdapter(options.allowSoftwareGpu ?? false), turns: newTurnWord() } };
}

export async function createEngine(spec: ModelSpec, given: EngineOptions): Promise<Engine> {
  const options = await prepareEngine(given);
  if (options.engine === 'onnx') {
    const { createOnnxEngine } = await import('./onnx/engine.js');
    return createOnnxEngine(spec, options);
  }
  const { createTfjsEngine } = await import('./tfjs/engine.js');
  const adapter = options.webgpu && (await import('./webgpu/adapter.js')).describeAdapter(options.webgpu.adapter);
  return createTfjsEngine(spec, options.device, adapter);
}

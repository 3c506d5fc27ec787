/**
 * Builds the engine a slot computes with, loading only the one asked for (tfjs and its backends are not
 * loaded by an onnx run). Apart from engine.ts, which the engines themselves import: imports stay one way.
 */
import type { ModelSpec } from '../model/spec.js';
import type { Engine, EngineOptions } from './engine.js';

export async function createEngine(spec: ModelSpec, options: EngineOptions): Promise<Engine> {
  if (options.engine === 'onnx') {
    const { createOnnxEngine } = await import('./onnx/engine.js');
    return createOnnxEngine(spec, options.device);
  }
  const { createTfjsEngine } = await import('./tfjs/engine.js');
  return createTfjsEngine(spec, options.device);
}

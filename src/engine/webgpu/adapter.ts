/**
 * Which WebGPU adapter this machine has, asked of Dawn through the npm package `webgpu` (Dawn's Node
 * bindings) before onnxruntime opens a session: onnxruntime's WebGPU provider (Dawn linked into its
 * library) neither names the adapter it picks nor says why there is none. Both Dawns take Vulkan on Linux
 * and the high-performance adapter by default, so they find the same one.
 *
 * The question is asked in a short-lived child process: a second Dawn then never shares this process with
 * onnxruntime's, and `webgpu`'s instance cannot be garbage-collected while in use (Dawn crashes when its
 * create() result is collected). It costs ~0.1–0.2 s, once per process (the main thread passes the answer
 * to its worker threads; see ../engine.ts prepareEngine).
 */
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { softwareGpuRefused, webGpuUnavailable } from '../../errors.js';

export interface WebGpuAdapter {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  /** A CPU implementation (lavapipe, SwiftShader): Dawn's fallback adapter or architecture "software". */
  software: boolean;
}

/** What is missing when there is no adapter: the Vulkan loader, a Vulkan driver, or (unknown) an adapter. */
export type MissingGpu = { missing: 'loader' | 'driver' | 'adapter'; detail: string };

/** Runs in the child: prints the adapter's info as JSON (null when there is none); Dawn explains on stderr. */
const PROBE = `
const { create } = await import(process.argv[1]);
const gpu = create([]);
const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
const info = adapter?.info;
process.stdout.write(JSON.stringify(info ? { vendor: info.vendor, architecture: info.architecture, device: info.device,
  description: info.description, software: !!(info.isFallbackAdapter || adapter.isFallbackAdapter) || info.architecture === 'software' } : null));
`;

/** The adapter Dawn would pick, or what is missing. */
export function probeWebGpuAdapter(): WebGpuAdapter | MissingGpu {
  let module: string;
  try {
    module = pathToFileURL(createRequire(import.meta.url).resolve('webgpu')).href;
  } catch {
    return { missing: 'adapter', detail: 'the npm package "webgpu" is not installed; run npm install' };
  }
  const child = spawnSync(process.execPath, ['--input-type=module', '-e', PROBE, module], { encoding: 'utf8', timeout: 60_000, stdio: ['ignore', 'pipe', 'pipe'] });
  let adapter: WebGpuAdapter | null = null;
  try {
    adapter = JSON.parse(child.stdout) as WebGpuAdapter | null;
  } catch {
    // no answer: the child failed, and its stderr (or the spawn error) says why
  }
  return adapter ?? diagnose(`${child.stderr ?? ''}\n${child.error?.message ?? ''}`);
}

/** Dawn's reason, from its warnings: the loader could not be loaded, or it found no driver. */
function diagnose(stderr: string): MissingGpu {
  const lines = stderr.split('\n').map((l) => l.replace(/^Warning:\s*/, '').trim());
  const said = (pattern: RegExp) => lines.find((l) => pattern.test(l));
  const loader = said(/libvulkan\.so/);
  if (loader) return { missing: 'loader', detail: loader };
  const driver = said(/no drivers|INCOMPATIBLE_DRIVER|vkCreateInstance|vkEnumeratePhysicalDevices/i);
  if (driver) return { missing: 'driver', detail: driver };
  return { missing: 'adapter', detail: said(/\S/) ?? 'Dawn found no adapter and said nothing' };
}

/** One line naming the adapter: vendor, architecture, description; e.g. "mesa, software, llvmpipe: Mesa 25.0.7 …". */
export function describeAdapter(adapter: WebGpuAdapter): string {
  const parts = [adapter.vendor || 'unknown vendor', adapter.architecture || 'unknown architecture', adapter.description.trim() || adapter.device || 'no description'];
  return `${parts.join(', ')}${adapter.software && adapter.architecture !== 'software' ? ' (software)' : ''}`;
}

/** The adapter a run may use: there is one, and it is a GPU unless software ones are allowed. */
export function requireWebGpuAdapter(allowSoftware: boolean): WebGpuAdapter {
  const probed = probeWebGpuAdapter();
  if ('missing' in probed) throw webGpuUnavailable(probed.missing, probed.detail);
  if (probed.software && !allowSoftware) throw softwareGpuRefused(describeAdapter(probed));
  return probed;
}

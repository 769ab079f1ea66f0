// Poison states, crafted from a real export of a session and uploaded through the API: each must
// be refused with 400 state_invalid before anything is stored (the head does not move), and the
// session must take its next turn as before. The tester's list: a tensor missing, empty or
// wrongly shaped, tensors swapped, NaN and Infinity values, a token count of 2^53 - 1.
import { createHash } from 'node:crypto';
import { readMStateHeader } from '../../shared/mstate.ts';

/** A file with this header and these tensor bytes, framed and checksummed as a valid file is. */
function craft(header: Record<string, unknown>, data: Uint8Array): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const dataStart = Math.ceil((16 + json.length) / 64) * 64;
  const out = new Uint8Array(dataStart + data.length + 32);
  out.set([0x89, 0x4d, 0x53, 0x54, 0x41, 0x54, 0x45, 0x0a]);
  const view = new DataView(out.buffer);
  view.setUint32(8, 2, true);
  view.setUint32(12, json.length, true);
  out.set(json, 16);
  out.set(data, dataStart);
  out.set(createHash('sha256').update(out.subarray(0, out.length - 32)).digest(), out.length - 32);
  return out;
}

type Tensors = Array<Record<string, unknown> & { name: string; offset: number; shape: number[]; byte_length: number }>;

/** Named poison variants of `good` (a valid export). */
export function poisonStates(good: Uint8Array): Array<{ name: string; bytes: Uint8Array }> {
  const { header, dataStart } = readMStateHeader(good);
  const data = () => good.slice(dataStart, good.length - 32);
  const variant = (name: string, change: (h: Record<string, unknown> & { tensors: Tensors }, d: Uint8Array) => void) => {
    const h = JSON.parse(JSON.stringify(header)) as Record<string, unknown> & { tensors: Tensors };
    const d = data();
    change(h, d);
    return { name, bytes: craft(h, d) };
  };
  const at = (h: { tensors: Tensors }, name: string) => h.tensors.find((t) => t.name === name)!;
  return [
    variant('a tensor missing', (h) => void (h.tensors = h.tensors.filter((t) => t.name !== 'ssm_state'))),
    variant('an empty tensor', (h) => Object.assign(at(h, 'conv_state'), { shape: [0, ...at(h, 'conv_state').shape.slice(1)], byte_length: 0 })),
    variant('a tensor wrongly shaped', (h) => Object.assign(at(h, 'ssm_state'), { shape: [...at(h, 'ssm_state').shape].reverse() })),
    variant('tensors swapped', (h) => {
      const [a, b] = [at(h, 'conv_state'), at(h, 'ssm_state')];
      [a.name, b.name] = [b.name, a.name];
    }),
    variant('a NaN', (h, d) => new DataView(d.buffer).setFloat32(at(h, 'ssm_state').offset + 4, NaN, true)),
    variant('an Infinity', (h, d) => new DataView(d.buffer).setFloat32(at(h, 'conv_state').offset, Infinity, true)),
    variant('a token count of 2^53 - 1', (h) => void (h['tokens_absorbed'] = 2 ** 53 - 1)),
    variant('an extra tensor', (h) => void h.tensors.push({ ...at(h, 'conv_state'), name: 'extra' })),
  ];
}

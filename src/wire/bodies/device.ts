/**
 * DEVICE carries the state of one device for the epoch. Body: a msgpack array `[name, state]`.
 *
 * `state` is whatever the VM adapter serialises (a plain object for SimulatedVm, an opaque byte blob of QEMU's
 * device sections for QemuVm); the wire only promises it arrives as it was sent. Byte strings inside `state`
 * decode as views of the frame body.
 */
import { KemariError } from '../../errors.js';
import { pack, unpack } from '../msgpack.js';
import { invalid } from '../validate.js';

/** DEVICE body. */
export interface DeviceState {
  name: string;
  state: unknown;
}

const NAME_BYTES_MAX = 255;

export function encodeDevice(device: DeviceState): Uint8Array[] {
  if (typeof device.name !== 'string' || device.name.length === 0 || Buffer.byteLength(device.name) > NAME_BYTES_MAX) {
    invalid('device.name', `must be a string of 1..${NAME_BYTES_MAX} bytes`, device.name);
  }
  if (device.state === undefined) invalid('device.state', 'must be defined');
  return [pack('DEVICE', [device.name, device.state])];
}

export function decodeDevice(body: Uint8Array): DeviceState {
  const value = unpack('DEVICE', body);
  if (!Array.isArray(value) || value.length !== 2 || typeof value[0] !== 'string' || value[0].length === 0 ||
    Buffer.byteLength(value[0]) > NAME_BYTES_MAX) {
    throw new KemariError('KEMARI_BAD_BODY', `DEVICE: body must be [name of 1..${NAME_BYTES_MAX} bytes, state]`);
  }
  return { name: value[0], state: value[1] };
}

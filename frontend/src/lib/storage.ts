/** localStorage helpers that never throw (private mode, quota, disabled storage). */

const PREFIX = 'live-diffusion:v1:';

export function load<T = unknown>(key: string): T | null {
	try {
		const raw = globalThis.localStorage?.getItem(PREFIX + key);
		return raw ? (JSON.parse(raw) as T) : null;
	} catch {
		return null;
	}
}

export function save(key: string, value: unknown): void {
	try {
		globalThis.localStorage?.setItem(PREFIX + key, JSON.stringify(value));
	} catch {
		/* storage unavailable: values just do not persist */
	}
}

/** A random UUID, also on insecure origins where crypto.randomUUID is missing. */
export function uuid(): string {
	const c = globalThis.crypto;
	if (c?.randomUUID) {
		try {
			return c.randomUUID();
		} catch {
			/* insecure context */
		}
	}
	const b = new Uint8Array(16);
	if (c?.getRandomValues) c.getRandomValues(b);
	else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
	b[6] = (b[6] & 0x0f) | 0x40;
	b[8] = (b[8] & 0x3f) | 0x80;
	const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
	return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

import { afterEach, describe, expect, it, vi } from 'vitest';
import { FrameDisplay, IdleCursor, type ObjectUrls } from './frame-display.svelte';

/** Object URLs `blob:1`, `blob:2`…, remembering the blobs made and the URLs revoked. */
function fakeUrls() {
	const blobs: Blob[] = [];
	const revoked: string[] = [];
	const urls: ObjectUrls = {
		create: (blob) => {
			blobs.push(blob);
			return `blob:${blobs.length}`;
		},
		revoke: (url) => revoked.push(url)
	};
	/** URLs made and not revoked. */
	const live = () => blobs.map((_, i) => `blob:${i + 1}`).filter((u) => !revoked.includes(u));
	return { urls, blobs, revoked, live };
}

const jpeg = (n: number) => new Uint8Array([0xff, 0xd8, n, 0xff, 0xd9]);

describe('FrameDisplay', () => {
	it('starts empty', () => {
		const f = new FrameDisplay(fakeUrls().urls);
		expect(f.url).toBeNull();
	});

	it('shows a frame as a JPEG blob URL', async () => {
		const u = fakeUrls();
		const f = new FrameDisplay(u.urls);
		f.show(jpeg(1));
		expect(f.url).toBe('blob:1');
		expect(u.blobs[0].type).toBe('image/jpeg');
		expect(new Uint8Array(await u.blobs[0].arrayBuffer())).toEqual(jpeg(1));
	});

	it('decodes one frame at a time and keeps only the newest waiting one', async () => {
		const u = fakeUrls();
		const f = new FrameDisplay(u.urls);
		f.show(jpeg(1));
		f.show(jpeg(2)); // dropped: a newer one came before the first was loaded
		f.show(jpeg(3));
		expect(u.blobs).toHaveLength(1);
		expect(f.url).toBe('blob:1');

		f.loaded(); // frame 1 on screen: frame 3 starts decoding
		expect(u.blobs).toHaveLength(2);
		expect(new Uint8Array(await u.blobs[1].arrayBuffer())).toEqual(jpeg(3));
		expect(f.url).toBe('blob:2');

		f.loaded();
		f.show(jpeg(4)); // nothing decoding: shown at once
		expect(f.url).toBe('blob:3');
	});

	it('revokes a frame only once the next one is on screen', () => {
		const u = fakeUrls();
		const f = new FrameDisplay(u.urls);
		f.show(jpeg(1));
		f.loaded();
		f.show(jpeg(2));
		expect(u.revoked).toEqual([]); // frame 1 stays on screen while frame 2 decodes
		f.loaded();
		expect(u.revoked).toEqual(['blob:1']);
		expect(u.live()).toEqual(['blob:2']);
	});

	it('a failed frame counts as loaded (onerror) and does not stall the stream', () => {
		const u = fakeUrls();
		const f = new FrameDisplay(u.urls);
		f.show(jpeg(1));
		f.show(jpeg(2));
		f.loaded();
		expect(f.url).toBe('blob:2');
	});

	it('clear revokes every URL and drops the waiting frame', () => {
		const u = fakeUrls();
		const f = new FrameDisplay(u.urls);
		f.show(jpeg(1));
		f.loaded();
		f.show(jpeg(2)); // decoding
		f.show(jpeg(3)); // waiting
		f.clear();
		expect(f.url).toBeNull();
		expect(u.revoked.sort()).toEqual(['blob:1', 'blob:2']);
		expect(u.live()).toEqual([]);

		f.show(jpeg(4)); // not busy any more: shown at once, the dropped frame 3 never comes back
		expect(f.url).toBe('blob:3');
		expect(u.blobs).toHaveLength(3);
		f.loaded();
		expect(u.live()).toEqual(['blob:3']);
	});

	it('clear with nothing shown, or a frame on screen only, revokes what there is', () => {
		const u = fakeUrls();
		const f = new FrameDisplay(u.urls);
		f.clear();
		expect(u.revoked).toEqual([]);
		f.show(jpeg(1));
		f.loaded();
		f.clear();
		expect(u.revoked).toEqual(['blob:1']);
	});

	it('returns the tag of each frame once loaded, the waiting frame keeping its own', () => {
		const f = new FrameDisplay<number | null>(fakeUrls().urls);
		f.show(jpeg(1), 100);
		f.show(jpeg(2), 200); // dropped with its tag
		f.show(jpeg(3), 300);
		expect(f.loaded()).toBe(100);
		expect(f.loaded()).toBe(300);
		f.show(jpeg(4), null);
		expect(f.loaded()).toBeNull();
		f.show(jpeg(5));
		expect(f.loaded()).toBeUndefined();
	});

	it('uses URL.createObjectURL / revokeObjectURL by default', () => {
		const create = vi.spyOn(URL, 'createObjectURL').mockReturnValue('blob:real');
		const revoke = vi.spyOn(URL, 'revokeObjectURL').mockImplementation(() => {});
		try {
			const f = new FrameDisplay();
			f.show(jpeg(1));
			expect(f.url).toBe('blob:real');
			f.clear();
			expect(create).toHaveBeenCalledOnce();
			expect(revoke).toHaveBeenCalledWith('blob:real');
		} finally {
			create.mockRestore();
			revoke.mockRestore();
		}
	});
});

describe('IdleCursor', () => {
	afterEach(() => {
		vi.useRealTimers();
	});

	it('turns idle after 2.5 s without a poke', () => {
		vi.useFakeTimers();
		const c = new IdleCursor();
		expect(c.idle).toBe(false);
		c.poke();
		vi.advanceTimersByTime(2499);
		expect(c.idle).toBe(false);
		vi.advanceTimersByTime(1);
		expect(c.idle).toBe(true);
	});

	it('a poke wakes it and restarts the wait', () => {
		vi.useFakeTimers();
		const c = new IdleCursor(1000);
		c.poke();
		vi.advanceTimersByTime(1000);
		expect(c.idle).toBe(true);
		c.poke();
		expect(c.idle).toBe(false);
		vi.advanceTimersByTime(600);
		c.poke();
		vi.advanceTimersByTime(600);
		expect(c.idle).toBe(false);
		vi.advanceTimersByTime(400);
		expect(c.idle).toBe(true);
	});

	it('stop cancels the wait', () => {
		vi.useFakeTimers();
		const c = new IdleCursor();
		c.poke();
		c.stop();
		vi.advanceTimersByTime(10_000);
		expect(c.idle).toBe(false);
	});
});

import { afterEach, describe, expect, it, vi } from 'vitest';
import { isFullscreen, onFullscreenChange, toggleFullscreen } from './fullscreen';

/** A document with the standard Fullscreen API, or only the webkit one. */
function fakeDocument({ fullscreen = null as unknown, webkit = false } = {}) {
	const listeners = new Map<string, Set<() => void>>();
	const doc = {
		exitFullscreen: webkit ? undefined : vi.fn(() => Promise.resolve()),
		webkitExitFullscreen: webkit ? vi.fn() : undefined,
		fullscreenElement: webkit ? undefined : (fullscreen as Element | null),
		webkitFullscreenElement: webkit ? (fullscreen as Element | null) : undefined,
		addEventListener: (type: string, fn: () => void) => {
			if (!listeners.has(type)) listeners.set(type, new Set());
			listeners.get(type)!.add(fn);
		},
		removeEventListener: (type: string, fn: () => void) => listeners.get(type)?.delete(fn),
		fire: (type: string) => listeners.get(type)?.forEach((fn) => fn()),
		listenerCount: () => [...listeners.values()].reduce((n, s) => n + s.size, 0)
	};
	return doc as typeof doc & Document;
}

describe('toggleFullscreen', () => {
	afterEach(() => vi.unstubAllGlobals());

	it('asks for fullscreen on the element when nothing is fullscreen', () => {
		const doc = fakeDocument();
		const requestFullscreen = vi.fn(() => Promise.reject(new Error('denied'))); // rejection swallowed
		toggleFullscreen({ requestFullscreen } as unknown as HTMLElement, doc);
		expect(requestFullscreen).toHaveBeenCalledOnce();
		expect(doc.exitFullscreen).not.toHaveBeenCalled();
	});

	it('leaves fullscreen when something is fullscreen', () => {
		const doc = fakeDocument({ fullscreen: {} });
		const requestFullscreen = vi.fn(() => Promise.resolve());
		toggleFullscreen({ requestFullscreen } as unknown as HTMLElement, doc);
		expect(doc.exitFullscreen).toHaveBeenCalledOnce();
		expect(requestFullscreen).not.toHaveBeenCalled();
	});

	it('falls back to the webkit API both ways', () => {
		const off = fakeDocument({ webkit: true });
		const webkitRequestFullscreen = vi.fn();
		toggleFullscreen({ webkitRequestFullscreen } as unknown as HTMLElement, off);
		expect(webkitRequestFullscreen).toHaveBeenCalledOnce();

		const on = fakeDocument({ webkit: true, fullscreen: {} });
		expect(isFullscreen(on)).toBe(true);
		toggleFullscreen({ webkitRequestFullscreen } as unknown as HTMLElement, on);
		expect(on.webkitExitFullscreen).toHaveBeenCalledOnce();
		expect(webkitRequestFullscreen).toHaveBeenCalledOnce();
	});

	it('does nothing without an element or without the Fullscreen API', () => {
		const doc = fakeDocument();
		expect(() => toggleFullscreen(undefined, doc)).not.toThrow();
		expect(() => toggleFullscreen(null, doc)).not.toThrow();
		expect(() => toggleFullscreen({} as HTMLElement, doc)).not.toThrow();
	});

	it("uses the page's document by default", () => {
		const doc = fakeDocument({ fullscreen: {} });
		vi.stubGlobal('document', doc);
		expect(isFullscreen()).toBe(true);
		toggleFullscreen(undefined);
		expect(doc.exitFullscreen).toHaveBeenCalledOnce();
	});
});

describe('onFullscreenChange', () => {
	it('reports the new state on the standard and the webkit event, until unsubscribed', () => {
		const doc = fakeDocument();
		const seen: boolean[] = [];
		const unsubscribe = onFullscreenChange((fs) => seen.push(fs), doc);
		doc.fullscreenElement = {} as Element;
		doc.fire('fullscreenchange');
		doc.fullscreenElement = null;
		doc.fire('webkitfullscreenchange');
		expect(seen).toEqual([true, false]);

		unsubscribe();
		expect(doc.listenerCount()).toBe(0);
		doc.fire('fullscreenchange');
		expect(seen).toEqual([true, false]);
	});
});

import { describe, expect, it, vi } from 'vitest';
import { isFullscreen, onFullscreenChange, toggleFullscreen } from './fullscreen';

// The standard Fullscreen API is checked in a real browser: in e2e/live.test.mjs the Fullscreen
// button and F put the output pane fullscreen in headless Chromium, F takes it out, and the pane
// follows. Chromium has the standard API, so what only a stand-in document can show is the fallback
// for browsers with the webkit-prefixed API alone (Safari before 16.4, iPads), and the guards.

/** A document with only the webkit-prefixed Fullscreen API. */
function webkitDocument(fullscreen: Element | null = null) {
	const listeners = new Map<string, Set<() => void>>();
	const doc = {
		webkitExitFullscreen: vi.fn(),
		webkitFullscreenElement: fullscreen,
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
	it('falls back to the webkit API both ways', () => {
		const off = webkitDocument();
		const webkitRequestFullscreen = vi.fn();
		toggleFullscreen({ webkitRequestFullscreen } as unknown as HTMLElement, off);
		expect(webkitRequestFullscreen).toHaveBeenCalledOnce();

		const on = webkitDocument({} as Element);
		expect(isFullscreen(on)).toBe(true);
		toggleFullscreen({ webkitRequestFullscreen } as unknown as HTMLElement, on);
		expect(on.webkitExitFullscreen).toHaveBeenCalledOnce();
		expect(webkitRequestFullscreen).toHaveBeenCalledOnce();
	});

	it('does nothing without an element or without the Fullscreen API', () => {
		const doc = webkitDocument();
		expect(() => toggleFullscreen(undefined, doc)).not.toThrow();
		expect(() => toggleFullscreen(null, doc)).not.toThrow();
		expect(() => toggleFullscreen({} as HTMLElement, doc)).not.toThrow();
	});
});

describe('onFullscreenChange', () => {
	it('reports the webkit event, until unsubscribed', () => {
		const doc = webkitDocument();
		const seen: boolean[] = [];
		const unsubscribe = onFullscreenChange((fs) => seen.push(fs), doc);
		doc.webkitFullscreenElement = {} as Element;
		doc.fire('webkitfullscreenchange');
		doc.webkitFullscreenElement = null;
		doc.fire('webkitfullscreenchange');
		expect(seen).toEqual([true, false]);

		unsubscribe();
		expect(doc.listenerCount()).toBe(0);
		doc.fire('webkitfullscreenchange');
		expect(seen).toEqual([true, false]);
	});
});

// The pop-out window (`/?view=output&channel=…`) gets the main page's output frames over a
// BroadcastChannel: the same bytes, at no cost to the server (not one of a session's streams).
import type { NoticeBoard } from './notice-board.svelte';
import type { FrameMirror } from './output-stream.svelte';
import { uuid } from './storage';

/** What the two windows say to each other. */
export type PopoutMessage =
	| { type: 'hello' } // pop-out → main: opened
	| { type: 'bye' } // pop-out → main: closing
	| { type: 'state'; title: string } // main → pop-out: the pipeline's title
	| { type: 'frame'; jpeg: Uint8Array }
	| { type: 'clear'; message: string };

/** What a newly opened pop-out shows first. */
export interface PopoutGreeting {
	title: string;
	jpeg: Uint8Array | null;
	idle: boolean;
}

/** The main page's end of the channel; sends frames only while a pop-out is open. */
export class PopoutChannel implements FrameMirror {
	/** Unique to this page, so two main pages each have their own pop-out. */
	readonly name = `live-diffusion-${uuid().slice(0, 8)}`;
	isOpen = $state(false);
	#channel: BroadcastChannel | null = null;
	#notices: NoticeBoard;

	constructor(notices: NoticeBoard) {
		this.#notices = notices;
	}

	/** Answers pop-out windows until the returned cleanup; `greeting()` says what a new one shows. */
	listen(greeting: () => PopoutGreeting): () => void {
		if (typeof BroadcastChannel === 'undefined') return () => {};
		const channel = new BroadcastChannel(this.name);
		this.#channel = channel;
		channel.onmessage = (ev: MessageEvent<PopoutMessage>) => {
			const type = ev.data?.type;
			if (type === 'hello') {
				this.isOpen = true;
				const g = greeting();
				this.#post({ type: 'state', title: g.title });
				if (g.jpeg) this.#post({ type: 'frame', jpeg: g.jpeg });
				else this.#post({ type: 'clear', message: g.idle ? 'Press Start in the main window.' : 'Waiting for the first frame…' });
			} else if (type === 'bye') {
				this.isOpen = false;
			}
		};
		return () => {
			channel.close();
			this.#channel = null;
		};
	}

	/** Opens the pop-out window at the output's size (or the screen's, if smaller). */
	openWindow(size: { width: number; height: number }): void {
		const w = Math.min(size.width, screen.availWidth || size.width);
		const h = Math.min(size.height, screen.availHeight || size.height);
		const url = `${location.pathname}?view=output&channel=${encodeURIComponent(this.name)}`;
		const win = window.open(url, this.name, `popup=yes,width=${w},height=${h}`);
		if (!win) {
			this.#notices.show({
				key: 'popout',
				level: 'warning',
				title: 'The pop-out window was blocked',
				detail: 'Allow pop-ups for this site and press the button again.'
			});
			return;
		}
		win.focus();
	}

	frame(jpeg: Uint8Array): void {
		if (this.isOpen) this.#post({ type: 'frame', jpeg });
	}

	clear(reason: string): void {
		this.#post({ type: 'clear', message: `${reason}. Press Start in the main window.` });
	}

	#post(message: PopoutMessage): void {
		this.#channel?.postMessage(message);
	}
}

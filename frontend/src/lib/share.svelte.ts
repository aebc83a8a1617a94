// Share view: the read-only viewer link of the live session, asked once per session. The link dies
// with its session; the panel then says so, and the next session has a new one.
import type { NoticeBoard } from './notice-board.svelte';
import type { LiveSession } from './session.svelte';
import { copyText, fetchViewerLinks, type ViewerLinks } from './viewer';

export type Copied = '' | 'page' | 'stream' | 'failed';

export class ShareLink {
	/** The current session's links; `ended` once that session is over. */
	link = $state.raw<(ViewerLinks & { ended: boolean }) | null>(null);
	panelOpen = $state(false);
	busy = $state(false);
	/** Which link was just copied ('failed': the browser refused), shown for a moment. */
	copied = $state<Copied>('');
	#copiedTimer: ReturnType<typeof setTimeout> | undefined;
	#notices: NoticeBoard;

	constructor(notices: NoticeBoard) {
		this.#notices = notices;
	}

	/** The Share view button: shows or hides the link, asking the server for it the first time. */
	async toggle(session: Pick<LiveSession, 'phase' | 'userId' | 'guard'>): Promise<void> {
		if (this.link && !this.link.ended) {
			this.panelOpen = !this.panelOpen;
			return;
		}
		if (session.phase !== 'live' || this.busy) return;
		const stillWanted = session.guard();
		this.busy = true;
		try {
			const links = await fetchViewerLinks(session.userId, location);
			if (!stillWanted()) return; // the session ended meanwhile: so did its link
			this.link = { ...links, ended: false };
			this.panelOpen = true;
			this.copied = '';
			this.#notices.dismiss('share');
		} catch (e) {
			if (!stillWanted()) return;
			this.#notices.show({
				key: 'share',
				level: 'warning',
				title: 'No viewer link',
				detail: e instanceof Error ? e.message : String(e),
				autoHideMs: 12000
			});
		} finally {
			this.busy = false;
		}
	}

	/** Puts a link on the clipboard; resolves false when the browser refused. */
	async copy(which: 'page' | 'stream'): Promise<boolean> {
		if (!this.link || this.link.ended) return true;
		const ok = await copyText(which === 'page' ? this.link.page : this.link.stream);
		this.copied = ok ? which : 'failed';
		clearTimeout(this.#copiedTimer);
		this.#copiedTimer = setTimeout(() => (this.copied = ''), 2500);
		return ok;
	}

	/** A new session: it gets its own link when asked. */
	sessionStarting(): void {
		this.link = null;
		this.panelOpen = false;
	}

	/** The session is over, and its link with it. */
	sessionEnded(): void {
		if (this.link && !this.link.ended) this.link = { ...this.link, ended: true };
	}
}

import type { Notice } from './notices';

/** The one notice the page shows at a time: a new one replaces the old. */
export class NoticeBoard {
	current = $state<Notice | null>(null);
	#hideTimer: ReturnType<typeof setTimeout> | undefined;

	show(notice: Notice): void {
		clearTimeout(this.#hideTimer);
		this.current = notice;
		if (notice.autoHideMs) {
			this.#hideTimer = setTimeout(() => {
				if (this.current === notice) this.current = null;
			}, notice.autoHideMs);
		}
	}

	/** Hides the notice; with a key, only a notice about that. */
	dismiss(key?: string): void {
		if (!key || this.current?.key === key) {
			clearTimeout(this.#hideTimer);
			this.current = null;
		}
	}
}

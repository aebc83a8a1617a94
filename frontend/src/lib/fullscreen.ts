// Fullscreen for the output pane, the pop-out window and the viewer page. Safari before 16.4
// (iPad included) has only the webkit-prefixed API, hence the fallbacks.

type WebkitDocument = Pick<Document, 'addEventListener' | 'removeEventListener'> & {
	fullscreenElement?: Element | null;
	exitFullscreen?: () => Promise<void>;
	webkitFullscreenElement?: Element | null;
	webkitExitFullscreen?: () => void;
};

type WebkitElement = {
	requestFullscreen?: () => Promise<void>;
	webkitRequestFullscreen?: () => void;
};

const pageDocument = (): WebkitDocument => document;

/** Whether anything on the page is fullscreen. */
export function isFullscreen(doc: WebkitDocument = pageDocument()): boolean {
	return !!(doc.fullscreenElement || doc.webkitFullscreenElement);
}

/** Out of fullscreen when something is fullscreen, else fullscreen on `el` (F, double-click). */
export function toggleFullscreen(el: HTMLElement | null | undefined, doc: WebkitDocument = pageDocument()): void {
	if (isFullscreen(doc)) {
		if (doc.exitFullscreen) void doc.exitFullscreen().catch(() => {});
		else doc.webkitExitFullscreen?.();
		return;
	}
	const target = el as WebkitElement | null | undefined;
	if (!target) return;
	// Refused without a user gesture, or by the browser's settings: nothing to say to the user.
	if (target.requestFullscreen) void target.requestFullscreen().catch(() => {});
	else target.webkitRequestFullscreen?.();
}

/** Calls `listener` with the new state whenever fullscreen is entered or left; returns the unsubscribe. */
export function onFullscreenChange(listener: (fullscreen: boolean) => void, doc: WebkitDocument = pageDocument()): () => void {
	const changed = () => listener(isFullscreen(doc));
	doc.addEventListener('fullscreenchange', changed);
	doc.addEventListener('webkitfullscreenchange', changed);
	return () => {
		doc.removeEventListener('fullscreenchange', changed);
		doc.removeEventListener('webkitfullscreenchange', changed);
	};
}

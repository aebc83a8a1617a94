export type Phase = 'idle' | 'starting' | 'connecting' | 'live';

export interface Notice {
	/** What it is about, so a later event can clear just this one (and tests can find it). */
	key: string;
	level: 'error' | 'warning' | 'info';
	title: string;
	detail?: string;
	action?: { label: string; run: () => void };
	autoHideMs?: number;
}

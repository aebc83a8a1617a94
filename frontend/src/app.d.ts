// See https://svelte.dev/docs/kit/types#app.d.ts
declare global {
	namespace App {}
	interface Window {
		/** Small read-only debug handle used by the end-to-end tests. */
		__liveDiffusion?: import('$lib/debug').DebugHandle;
	}
}

export {};

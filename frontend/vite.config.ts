import { sveltekit } from '@sveltejs/kit/vite';
import { defineConfig } from 'vitest/config';

// During `npm run dev`, API calls go to a running server (LD_API, default http://127.0.0.1:7860).
const env = (globalThis as { process?: { env: Record<string, string | undefined> } }).process?.env ?? {};
const api = env.LD_API ?? 'http://127.0.0.1:7860';

export default defineConfig({
	plugins: [sveltekit()],
	server: {
		proxy: {
			'/api': { target: api, ws: true, changeOrigin: true }
		}
	},
	test: {
		include: ['src/**/*.test.ts'],
		environment: 'node'
	}
});

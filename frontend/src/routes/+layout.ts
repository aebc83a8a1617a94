// A pure client-side page: the static build is a shell, everything runs in the browser.
export const prerender = true;
export const ssr = false;

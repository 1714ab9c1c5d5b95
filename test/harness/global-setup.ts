/** Placeholder until the Redis harness lands: starts nothing. */
export default async function setup(): Promise<void> {}

// Where the prefix cache's states live under the state store's root (shared/prefix-cache.ts),
// apart from tenants' sessions so that one S3 lifecycle rule can expire them by age
// (cdk/lib/state-bucket.ts) and one IAM grant can let workers evict them. Both import it from
// here: renaming it would leave the rule and the grant on a prefix nothing is written to.
export const PREFIX_CACHE_ROOT = 'prefix-cache';

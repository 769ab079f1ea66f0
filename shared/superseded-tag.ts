// The S3 object tag that marks a session version replaced by a newer head: the state store
// writes it (state-store-s3.ts) and the deployment's lifecycle rule expires what carries it
// (cdk/lib/state-bucket.ts). Both import it from here, so a renamed tag cannot leave the rule
// matching nothing and every version kept forever. Objects already tagged in deployed buckets
// carry this exact name: renaming it strands them unexpired.
export const SUPERSEDED_TAG = { key: 'mamba-serve:superseded', value: 'true' } as const;

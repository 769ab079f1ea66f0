// Small readers of synthesized CloudFormation: references between resources, IAM statements,
// and rendering intrinsic values into plausible strings so env vars can be fed to the apps'
// own zod schemas.

type Json = unknown;

/** Does `value` contain a Ref or Fn::GetAtt to `logicalId`? */
export function references(value: Json, logicalId: string): boolean {
  if (Array.isArray(value)) return value.some((v) => references(v, logicalId));
  if (value && typeof value === 'object') {
    const o = value as Record<string, Json>;
    if (o['Ref'] === logicalId) return true;
    const getAtt = o['Fn::GetAtt'];
    if (Array.isArray(getAtt) && getAtt[0] === logicalId) return true;
    return Object.values(o).some((v) => references(v, logicalId));
  }
  return false;
}

export interface Statement {
  Effect: 'Allow' | 'Deny';
  Action?: string | string[];
  Resource?: Json;
  Condition?: Record<string, Record<string, Json>>;
  Principal?: Json;
}

export const asList = <T>(v: T | T[] | undefined): T[] => (v === undefined ? [] : Array.isArray(v) ? v : [v]);

/** Every identity-policy statement in the template, with the logical id of the policy it is in. */
export function identityStatements(resources: Record<string, { Type: string; Properties?: Record<string, Json> }>): {
  policy: string;
  roles: Json;
  statement: Statement;
}[] {
  const out: { policy: string; roles: Json; statement: Statement }[] = [];
  for (const [id, r] of Object.entries(resources)) {
    const p = r.Properties ?? {};
    if (r.Type === 'AWS::IAM::Policy' || r.Type === 'AWS::IAM::ManagedPolicy') {
      const doc = p['PolicyDocument'] as { Statement: Statement[] };
      for (const statement of doc.Statement) out.push({ policy: id, roles: p['Roles'], statement });
    }
    if (r.Type === 'AWS::IAM::Role') {
      for (const inline of asList(p['Policies'] as { PolicyDocument: { Statement: Statement[] } }[] | undefined)) {
        for (const statement of inline.PolicyDocument.Statement) out.push({ policy: id, roles: [{ Ref: id }], statement });
      }
    }
  }
  return out;
}

/** What `Ref` returns for resource types whose Ref is an ARN. */
const REF_IS_ARN: Record<string, string> = {
  'AWS::SecretsManager::Secret': 'arn:aws:secretsmanager:us-east-1:123456789012:secret:placeholder-AbCdEf',
  'AWS::SNS::Topic': 'arn:aws:sns:us-east-1:123456789012:placeholder',
};

/**
 * A plausible string for an intrinsic value: ports become 6380, Refs of secrets and topics an
 * ARN, other attributes and Refs a lowercase placeholder (valid in a host name and a bucket
 * name), joins are joined.
 */
export function render(value: Json, resources: Record<string, { Type: string }> = {}): string {
  if (typeof value === 'string') return value.startsWith('{{resolve:') ? 'resolved-secret-value' : value;
  if (typeof value === 'number') return String(value);
  if (value && typeof value === 'object') {
    const o = value as Record<string, Json>;
    if ('Ref' in o) {
      if (o['Ref'] === 'AWS::Region') return 'us-east-1';
      return REF_IS_ARN[resources[String(o['Ref'])]?.Type ?? ''] ?? 'placeholder';
    }
    if ('Fn::GetAtt' in o) {
      const attr = String((o['Fn::GetAtt'] as Json[])[1]);
      return attr.endsWith('Port') ? '6380' : 'placeholder';
    }
    if ('Fn::Join' in o) {
      const [sep, parts] = o['Fn::Join'] as [string, Json[]];
      return parts.map((part) => render(part, resources)).join(sep);
    }
  }
  throw new Error(`cannot render ${JSON.stringify(value)}`);
}

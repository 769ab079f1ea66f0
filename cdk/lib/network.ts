// The VPC that Redis, the GPU workers and both Lambdas live in. Nothing in it accepts traffic
// from the internet: clients reach the edge through its Function URL (Lambda's own front door),
// and the edge reaches Redis and S3 from inside.
//
// Egress, two modes (context `egress`):
// - `nat` (default): private subnets with one NAT gateway, plus the S3 gateway endpoint.
//   The bulk traffic (session states, model weights, and ECR image layers, which ECR serves
//   from S3) takes the free gateway endpoint; only small API calls (ECR auth, Logs, Secrets
//   Manager, CloudWatch, ECS agent) cross the NAT. One NAT costs ~$33/month + $0.045/GB, about
//   a third of the eight interface endpoints below in two AZs (~$117/month), and it lets a
//   worker reach anything else it may need (e.g. a model hub). It is a single point of failure
//   for egress; set `maxAzs`/NAT count higher if that matters more than cost.
// - `endpoints`: isolated subnets with no route to the internet at all, and interface endpoints
//   for exactly what the stack calls: ECR (api + dkr) to pull the worker image, CloudWatch Logs
//   for the awslogs driver, Secrets Manager for ECS secret injection and the Lambdas' secret
//   reads, CloudWatch monitoring for the queue-metrics publisher, and ECS (ecs, ecs-agent,
//   ecs-telemetry) for the container agent on the GPU instances. Choose it when a deployment
//   must have no path out (tenants' states never leave the VPC except to S3).
// The S3 gateway endpoint is in both modes: it is free and keeps multi-GB pulls off the NAT.
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';

/** A literal (not the VPC's CidrBlock attribute), so rules over ingress ranges can read it. */
export const VPC_CIDR = '10.40.0.0/16';

export interface NetworkProps {
  readonly egress: 'nat' | 'endpoints';
  readonly maxAzs: number;
  /** Rejected-traffic flow logs go here (under `vpc-flow-logs/`): cheaper than CloudWatch Logs. */
  readonly flowLogBucket: s3.IBucket;
}

export class Network extends Construct {
  readonly vpc: ec2.Vpc;
  /** Where Redis, the GPU instances and the Lambdas are placed. */
  readonly appSubnets: ec2.SubnetSelection;

  constructor(scope: Construct, id: string, props: NetworkProps) {
    super(scope, id);
    const privateType = props.egress === 'nat' ? ec2.SubnetType.PRIVATE_WITH_EGRESS : ec2.SubnetType.PRIVATE_ISOLATED;
    this.vpc = new ec2.Vpc(this, 'Vpc', {
      ipAddresses: ec2.IpAddresses.cidr(VPC_CIDR),
      maxAzs: props.maxAzs,
      natGateways: props.egress === 'nat' ? 1 : 0,
      // A public subnet exists only to hold the NAT gateway; nothing else is placed in it.
      subnetConfiguration: [
        ...(props.egress === 'nat' ? [{ name: 'public', subnetType: ec2.SubnetType.PUBLIC, cidrMask: 24 }] : []),
        { name: 'app', subnetType: privateType, cidrMask: 20 },
      ],
      restrictDefaultSecurityGroup: true,
      gatewayEndpoints: { S3: { service: ec2.GatewayVpcEndpointAwsService.S3 } },
    });
    this.appSubnets = { subnetType: privateType };

    this.vpc.addFlowLog('FlowLog', {
      destination: ec2.FlowLogDestination.toS3(props.flowLogBucket, 'vpc-flow-logs/'),
      trafficType: ec2.FlowLogTrafficType.REJECT,
    });

    if (props.egress === 'endpoints') {
      const services: Record<string, ec2.InterfaceVpcEndpointAwsService> = {
        EcrApi: ec2.InterfaceVpcEndpointAwsService.ECR,
        EcrDocker: ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER,
        Logs: ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
        SecretsManager: ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
        Monitoring: ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_MONITORING,
        Ecs: ec2.InterfaceVpcEndpointAwsService.ECS,
        EcsAgent: ec2.InterfaceVpcEndpointAwsService.ECS_AGENT,
        EcsTelemetry: ec2.InterfaceVpcEndpointAwsService.ECS_TELEMETRY,
      };
      for (const [name, service] of Object.entries(services)) {
        const endpoint = this.vpc.addInterfaceEndpoint(name, { service, subnets: this.appSubnets, privateDnsEnabled: true, open: false });
        // HTTPS from inside the VPC only: everything that calls AWS APIs lives in it.
        endpoint.connections.allowFrom(ec2.Peer.ipv4(VPC_CIDR), ec2.Port.tcp(443), 'HTTPS from the VPC');
      }
    }
  }
}

// Worker autoscaling on the published queue metric `DesiredWorkers`
// (= ceil((waiting + delayed + active turns) / turnsPerWorker), see edge/queue-metrics.ts).
//
// Why step scaling with exact capacities, not target tracking:
// - Target tracking computes the new count proportionally from the current one, and a
//   proportion of zero workers is zero: it cannot scale out from zero, which is our default
//   minimum. It also rejects metric math, so "backlog per worker" could not be computed there.
// - The publisher already computes how many workers the queue needs, so the policy only has
//   to set that number: one step per worker count, EXACT_CAPACITY. Setting an absolute count
//   is idempotent, so while a GPU instance boots (minutes) the repeated alarm invocations
//   (CloudWatch re-invokes Auto Scaling actions every minute in ALARM) do not pile up more
//   workers the way "+1" steps would.
//
// Two alarms, because scaling up and scaling to zero want different patience:
// - WorkersNeeded (metric >= 1 for one minute) sets the count the queue needs, up or down
//   between 1 and max; a worker that is stopped while busy releases its turns gracefully.
// - NoWorkersNeeded (metric = 0 for `scaleToZeroAfterMinutes`) sets zero (or the minimum),
//   so a short lull does not throw away warm GPUs and a cold start costs minutes.
// Missing data (publisher down) breaches neither alarm: the count stays where it is, and the
// "queue metrics stale" alarm (cdk/lib/alarms.ts) tells a person.
import { Duration } from 'aws-cdk-lib';
import * as appscaling from 'aws-cdk-lib/aws-applicationautoscaling';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import type * as ecs from 'aws-cdk-lib/aws-ecs';
import { Construct } from 'constructs';

export interface QueueScalingProps {
  readonly service: ecs.Ec2Service;
  /** DesiredWorkers, statistic Maximum, one-minute period. */
  readonly desiredWorkers: cloudwatch.IMetric;
  readonly minWorkers: number;
  readonly maxWorkers: number;
  readonly scaleToZeroAfterMinutes: number;
}

export class QueueScaling extends Construct {
  readonly workersNeeded: cloudwatch.Alarm;
  readonly noWorkersNeeded: cloudwatch.Alarm;

  constructor(scope: Construct, id: string, props: QueueScalingProps) {
    super(scope, id);
    const target = props.service.autoScaleTaskCount({ minCapacity: props.minWorkers, maxCapacity: props.maxWorkers });

    // Bounds are relative to the alarm threshold (0.5): step n covers DesiredWorkers in
    // [n - 0.5, n + 0.5), and the last step everything above.
    const setCount = new appscaling.StepScalingAction(this, 'SetWorkerCount', {
      scalingTarget: target,
      adjustmentType: appscaling.AdjustmentType.EXACT_CAPACITY,
      metricAggregationType: appscaling.MetricAggregationType.MAXIMUM,
      cooldown: Duration.minutes(1),
    });
    for (let n = 1; n <= props.maxWorkers; n++) {
      setCount.addAdjustment({
        lowerBound: n - 1,
        ...(n < props.maxWorkers ? { upperBound: n } : {}),
        adjustment: n,
      });
    }
    this.workersNeeded = new cloudwatch.Alarm(this, 'WorkersNeeded', {
      alarmDescription: 'Turns are queued or running: set the worker count to DesiredWorkers',
      metric: props.desiredWorkers,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      threshold: 0.5,
      evaluationPeriods: 1,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
    this.workersNeeded.addAlarmAction({ bind: () => ({ alarmActionArn: setCount.scalingPolicyArn }) });

    const scaleToZero = new appscaling.StepScalingAction(this, 'ScaleToZero', {
      scalingTarget: target,
      adjustmentType: appscaling.AdjustmentType.EXACT_CAPACITY,
      metricAggregationType: appscaling.MetricAggregationType.MAXIMUM,
      cooldown: Duration.minutes(1),
    });
    // Application Auto Scaling clamps 0 to the scalable target's minimum.
    scaleToZero.addAdjustment({ upperBound: 0, adjustment: 0 });
    this.noWorkersNeeded = new cloudwatch.Alarm(this, 'NoWorkersNeeded', {
      alarmDescription: `No turn queued or running for ${props.scaleToZeroAfterMinutes} minutes: stop the workers`,
      metric: props.desiredWorkers,
      comparisonOperator: cloudwatch.ComparisonOperator.LESS_THAN_OR_EQUAL_TO_THRESHOLD,
      threshold: 0,
      evaluationPeriods: props.scaleToZeroAfterMinutes,
      datapointsToAlarm: props.scaleToZeroAfterMinutes,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
    this.noWorkersNeeded.addAlarmAction({ bind: () => ({ alarmActionArn: scaleToZero.scalingPolicyArn }) });
  }
}

-- A statutory return is complete once the local authority accepts it, so an accepted return
-- no longer stops the next return of its kind for the pupil.

DROP INDEX referrals_one_open;
CREATE UNIQUE INDEX referrals_one_open ON referrals (upn, laestab, kind)
    WHERE status NOT IN ('paid', 'prosecution', 'withdrawn')
      AND NOT (status = 'accepted' AND kind IN ('unauthorised_absence_return',
          'sickness_return', 'new_pupil_return', 'deletion_return'));
